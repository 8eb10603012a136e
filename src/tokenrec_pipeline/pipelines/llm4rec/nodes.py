"""Nodes of the llm4rec stage (model code in ``tokenrec_pipeline.models.llm4rec``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tokenrec_pipeline.models.llm4rec import LLM4Rec, LLM4RecConfig, TrainConfig, build_llm4rec, train_llm4rec
from tokenrec_pipeline.models.tokenizers import FittedTokenizer
from tokenrec_pipeline.models.tokenrec import evaluate_prompts, id_token_vocabularies
from tokenrec_pipeline.reporting import history_to_mlflow

logger = logging.getLogger(__name__)


def train_llm4rec_model(
    train_prompts: pd.DataFrame,
    valid_prompts: pd.DataFrame,
    cf_embeddings: dict,
    user_tokenizer: FittedTokenizer,
    item_tokenizer: FittedTokenizer,
    tokenizer: dict,
    llm4rec: dict,
    seed: int,
) -> tuple[LLM4Rec, pd.DataFrame, dict]:
    """Fine-tune the language model on the train prompts; select the epoch by validation NDCG@20.

    The backbone gets the K*L user and K*L item tokens (embeddings initialised from the
    codewords), a projection head maps its pooled state to the CF space, and the loss pulls z
    towards the target item's CF vector and away from sampled negatives (1 - cos / max(0, cos - gamma)).

    Returns:
        (llm4rec_model, llm4rec_training_history, llm4rec_training_curves)
    """
    item_vectors = cf_embeddings["item_embeddings"]
    vocab = id_token_vocabularies(user_tokenizer, item_tokenizer, tokenizer["user"]["token_prefix"],
                                  tokenizer["item"]["token_prefix"])
    model_config = LLM4RecConfig.from_dict({**llm4rec["model"], "cf_dim": int(item_vectors.shape[1]), "seed": seed})
    train_config = TrainConfig.from_dict({**llm4rec["training"], "seed": seed})
    model = build_llm4rec(model_config, vocab["user_tokens"], vocab["item_tokens"], vocab["user_token_vectors"],
                          vocab["item_token_vectors"], device=llm4rec.get("device"))

    def validate(current: LLM4Rec) -> dict[str, float]:
        result = evaluate_prompts(current, valid_prompts, item_vectors)
        return {k.lower(): v for k, v in result.metrics.items()}

    result = train_llm4rec(
        model, list(train_prompts["prompt"]), train_prompts["target_item"].to_numpy(), item_vectors, train_config,
        histories=[np.asarray(h) for h in train_prompts["history"]], validate_fn=validate,
    )
    history = pd.DataFrame(result.history)
    curves = history_to_mlflow(history, "llm4rec.train")
    logger.info("LLM4Rec: best epoch %d (%s=%.4f), %.0fs", result.best_epoch, result.monitor, result.best_score, result.seconds)
    return model, history, curves
