"""TokenRec's generative retrieval glue: prompts -> LLM4Rec -> z -> cosine against item vectors.

Plain functions shared by the llm4rec, evaluation and recommend stages.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from tokenrec_pipeline.models.evaluation import RankingResult, evaluate_ranking, metrics_to_frame, ranks_to_frame
from tokenrec_pipeline.models.item_index import ItemIndex, search
from tokenrec_pipeline.models.llm4rec import LLM4Rec
from tokenrec_pipeline.models.tokenizers import FittedTokenizer, token_vocabulary


def id_token_vocabularies(user_tokenizer: FittedTokenizer, item_tokenizer: FittedTokenizer,
                          user_prefix: str, item_prefix: str) -> dict:
    """Both vocabularies (codebook-major strings) and their codeword vectors ``(K*L, d_c)`` for
    initialising the language model's new token embeddings."""
    def vectors(fitted: FittedTokenizer) -> torch.Tensor:
        codewords = fitted.codebook_vectors()
        return torch.as_tensor(codewords.reshape(-1, codewords.shape[-1]))

    return {
        "user_tokens": token_vocabulary(user_tokenizer.n_codebooks, user_tokenizer.codebook_size, user_prefix),
        "item_tokens": token_vocabulary(item_tokenizer.n_codebooks, item_tokenizer.codebook_size, item_prefix),
        "user_token_vectors": vectors(user_tokenizer),
        "item_token_vectors": vectors(item_tokenizer),
    }


def evaluate_prompts(model: LLM4Rec, prompts: pd.DataFrame, item_vectors: torch.Tensor,
                     batch_size: int = 64) -> RankingResult:
    """Protocol metrics of one prompt table: the model's unit query per prompt scored against every item's
    vector in the model's item space (``item_vectors``: ``model.items_in_space(cf_vectors)`` or the index's
    vectors), the row's history excluded, its target ranked."""
    # Thousands of prompts take minutes on CPU: show progress.
    z = model.encode_prompts(list(prompts["prompt"]), batch_size=batch_size, show_progress=True)
    histories = [np.asarray(h, dtype=np.int64) for h in prompts["history"]]
    return evaluate_ranking(prompts["user_id"].to_numpy(), histories, prompts["target_item"].to_numpy(),
                            user_vectors=z, item_vectors=item_vectors, similarity="cosine")


def evaluate_prompt_variants(model: LLM4Rec, test_prompts: pd.DataFrame, item_vectors: torch.Tensor,
                             model_name: str = "tokenrec", batch_size: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (variant, user group) of the test prompt table -> long metrics table + per-user ranks.

    The ``full`` variant is reported as ``model_name``; the others as ``model_name (variant)``.
    """
    frames, ranks = [], []
    for (variant, group), rows in test_prompts.groupby(["variant", "user_group"], sort=False):
        result = evaluate_prompts(model, rows, item_vectors, batch_size)
        name = model_name if variant == "full" else f"{model_name} ({variant})"
        frames.append(metrics_to_frame({group: result}, model=name, split="test"))
        ranks.append(ranks_to_frame({group: result}, model=name, split="test"))
    return pd.concat(frames, ignore_index=True), pd.concat(ranks, ignore_index=True)


def retrieve(model: LLM4Rec, index: ItemIndex, prompts: list[str], histories: list[list[int]], k: int,
             batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item ids and cosine scores per prompt in one forward pass + one index search."""
    z = model.encode_prompts(prompts, batch_size=batch_size).numpy()
    return search(index, z, k, exclude=histories)


def time_retrieval(model: LLM4Rec, index: ItemIndex, prompts: list[str], histories: list[list[int]],
                   k: int = 20, batch_size: int = 64, repeats: int = 2) -> float:
    """Median milliseconds per user of :func:`retrieve` over ``repeats`` runs (after a warm-up)."""
    retrieve(model, index, prompts[:batch_size], histories[:batch_size], k, batch_size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        retrieve(model, index, prompts, histories, k, batch_size)
        times.append((time.perf_counter() - start) / max(len(prompts), 1) * 1000)
    return float(np.median(times))


def item_vectors_from_index(index: ItemIndex, n_items: int | None = None) -> torch.Tensor:
    """The (L2-normalised) vectors held by ``index``, row ``j`` = item id ``j``; ids absent from
    the index get zero vectors. Evaluating against these scores exactly what the index serves."""
    import faiss

    flat = faiss.downcast_index(index.cpu_index.index)
    vectors = flat.reconstruct_n(0, index.ntotal)
    ids = index.ids()
    size = max(int(ids.max()) + 1 if len(ids) else 0, n_items or 0)
    out = np.zeros((size, vectors.shape[1]), dtype=np.float32)
    out[ids] = vectors
    return torch.from_numpy(out)
