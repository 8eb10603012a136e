"""TokenRec's generative retrieval glue: prompts -> LLM4Rec -> z -> cosine against item vectors.

Plain functions shared by the llm4rec, evaluation and recommend stages.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from tokenrec_pipeline.evaluation.item_index import ItemIndex, search
from tokenrec_pipeline.evaluation.ranking import RankingResult, evaluate_ranking, metrics_to_frame, ranks_to_frame
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
             batch_size: int = 64, precision: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item ids and cosine scores per prompt in one forward pass + one index search (``precision``:
    as :meth:`LLM4Rec.encode_prompts`; ``None``, the model's own)."""
    z = model.encode_prompts(prompts, batch_size=batch_size, precision=precision).numpy()
    return search(index, z, k, exclude=histories)


def time_retrieval(model: LLM4Rec, index: ItemIndex, prompts: list[str], histories: list[list[int]],
                   k: int = 20, batch_size: int = 64, repeats: int = 2, precision: str | None = None) -> float:
    """Median milliseconds per user of :func:`retrieve` over ``repeats`` runs (after a warm-up)."""
    retrieve(model, index, prompts[:batch_size], histories[:batch_size], k, batch_size, precision)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        retrieve(model, index, prompts, histories, k, batch_size, precision)
        times.append((time.perf_counter() - start) / max(len(prompts), 1) * 1000)
    return float(np.median(times))


def compare_precisions(model: LLM4Rec, index: ItemIndex, prompts: list[str], histories: list[list[int]],
                       targets: np.ndarray, precisions: list[str], k: int = 20,
                       single_users: int = 16) -> pd.DataFrame:
    """Speed and agreement of each inference precision on the same prompts, fp32 as the reference.

    Returns:
        One row per precision that runs on the model's device: ``precision``, ``ms_per_user`` (batch 64),
        ``ms_per_user_batch_1`` (first ``single_users`` prompts), ``hr_at_k`` (share of prompts whose target is
        in the top k), ``overlap_with_fp32`` (mean share of fp32's top k that this precision also returns)
        and ``speedup_vs_fp32`` (batch 64).
    """
    reference, _ = retrieve(model, index, prompts, histories, k, precision="fp32")
    rows = []
    for precision in dict.fromkeys(["fp32", *precisions]):
        try:
            resolved = model.inference_precision(precision)
        except ValueError as error:  # e.g. int8 on a GPU: not a path this device has
            rows.append({"precision": precision, "skipped": str(error)})
            continue
        ids, _ = retrieve(model, index, prompts, histories, k, precision=resolved)
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), reference.tolist(), strict=True)])
        hits = np.mean([target in row for target, row in zip(targets.tolist(), ids.tolist(), strict=True)])
        single = min(len(prompts), single_users)
        rows.append({
            "precision": resolved,
            "ms_per_user": time_retrieval(model, index, prompts, histories, k, 64, precision=resolved),
            "ms_per_user_batch_1": time_retrieval(model, index, prompts[:single], histories[:single], k, 1,
                                                  precision=resolved),
            f"hr_at_{k}": float(hits),
            "overlap_with_fp32": float(overlap),
        })
    table = pd.DataFrame(rows).drop_duplicates("precision")
    fp32_ms = float(table.loc[table["precision"] == "fp32", "ms_per_user"].iloc[0])
    table["speedup_vs_fp32"] = fp32_ms / table["ms_per_user"]
    return table.reset_index(drop=True)


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
