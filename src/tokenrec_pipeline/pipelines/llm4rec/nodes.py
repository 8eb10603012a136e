"""Nodes of the llm4rec stage (model code in ``tokenrec_pipeline.models.llm4rec``; the training job, in-process
or DDP under torchrun, in ``tokenrec_pipeline.distributed_train``)."""

from __future__ import annotations

import logging

import mlflow
import pandas as pd

from tokenrec_pipeline.distributed_train import (
    CURVES_PREFIX,
    DistributedSettings,
    LLM4RecJob,
    fit_llm4rec,
    train_distributed,
)
from tokenrec_pipeline.models.llm4rec import LLM4Rec, LLM4RecConfig, TrainConfig
from tokenrec_pipeline.models.tokenizers import FittedTokenizer
from tokenrec_pipeline.models.tokenrec import id_token_vocabularies
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

    With ``llm4rec.distributed.enabled`` the same training runs as a DDP job under ``torchrun`` (a
    subprocess; its inputs go through a job folder, rank 0's checkpoint comes back from it); its rank 0
    logs the epoch curves live into this run, so the returned curves are then empty.

    Returns:
        (llm4rec_model, llm4rec_training_history, llm4rec_training_curves)
    """
    item_vectors = cf_embeddings["item_embeddings"]
    vocab = id_token_vocabularies(user_tokenizer, item_tokenizer, tokenizer["user"]["token_prefix"],
                                  tokenizer["item"]["token_prefix"])
    job = LLM4RecJob(
        train_prompts=train_prompts, valid_prompts=valid_prompts, item_vectors=item_vectors,
        user_tokens=vocab["user_tokens"], item_tokens=vocab["item_tokens"],
        user_token_vectors=vocab["user_token_vectors"], item_token_vectors=vocab["item_token_vectors"],
        model_config=LLM4RecConfig.from_dict({**llm4rec["model"], "cf_dim": int(item_vectors.shape[1]), "seed": seed}),
        train_config=TrainConfig.from_dict({**llm4rec["training"], "seed": seed}),
        device=llm4rec.get("device"),
    )
    settings = DistributedSettings.from_dict(llm4rec.get("distributed") or {})
    if settings.enabled:
        run = mlflow.active_run()
        run_id = run.info.run_id if run is not None else None
        model, history = train_distributed(job, settings, run_id, mlflow.get_tracking_uri() if run_id else None)
        curves = {} if run_id else history_to_mlflow(history, CURVES_PREFIX)
    else:
        model, result = fit_llm4rec(job)
        history = pd.DataFrame(result.history)
        curves = history_to_mlflow(history, CURVES_PREFIX)
    monitor = job.train_config.monitor
    best = history.loc[history[monitor].idxmax() if job.train_config.monitor_mode == "max" else history[monitor].idxmin()]
    logger.info("LLM4Rec: best epoch %d of %d (%s=%.4f), %.0fs", best["epoch"], len(history), monitor, best[monitor],
                history["seconds"].sum())
    return model, history, curves
