"""Nodes of the CF pretraining stage (model code lives in ``tokenrec_pipeline.models.cf``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from tokenrec_pipeline.models.cf import (
    CFConfig,
    evaluate_cf,
    evaluate_pop,
    train_cf_from_splits,
)
from tokenrec_pipeline.models.evaluation import RankingResult, eval_inputs_from_splits, metrics_wide
from tokenrec_pipeline.reporting import history_to_mlflow, markdown_table, metrics_table_to_mlflow

logger = logging.getLogger(__name__)


def _ranks_frame(results: dict[str, dict[str, RankingResult]], model: str) -> pd.DataFrame:
    """Per-user expected ranks (for paired significance tests later), one row per evaluated user."""
    frames = [
        pd.DataFrame({"model": model, "split": split, "user_group": group, "user_id": res.users.astype(np.int64),
                      "target_item": res.targets.astype(np.int64), "rank": res.ranks})
        for split, groups in results.items()
        for group, res in groups.items()
    ]
    return pd.concat(frames, ignore_index=True)


def train_cf_model(
    interactions_split: pd.DataFrame, cf_model: dict, fold_in: str, seed: int
) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train one CF model (LightGCN or MF) on the train split, early-stopped on validation
    NDCG@20, then evaluate the selected epoch on valid and test (seen + folded-in unseen users).

    Returns:
        (cf_embeddings, training_history, metrics, ranks, training_curves):
        ``cf_embeddings`` holds ``user_embeddings`` (seen users), ``unseen_user_embeddings``
        (folded in from their histories, no retraining), ``item_embeddings`` and the train
        degrees ``user_degree`` / ``item_degree``.
    """
    config = CFConfig(**{**cf_model, "seed": seed})
    result = train_cf_from_splits(interactions_split, config)
    model = config.model
    frames, results = [], {}
    for split in ("valid", "test"):
        frame, results[split] = evaluate_cf(result, interactions_split, split=split, fold_in_method=fold_in)
        frames.append(frame)
    unseen = eval_inputs_from_splits(interactions_split, "unseen", "test")
    # The same (calibrated) fold-in evaluate_cf scores, so the tokenizer sees what was evaluated.
    unseen_vectors = result.fold_in_users(unseen.histories, fold_in)
    embeddings = {
        "user_embeddings": result.user_embeddings,
        "unseen_user_embeddings": unseen_vectors,
        "item_embeddings": result.item_embeddings,
        "user_degree": torch.as_tensor(result.user_degree, dtype=torch.float32),
        "item_degree": torch.as_tensor(result.item_degree, dtype=torch.float32),
        # What serving new users / items needs without retraining (see CFResult.fold_in_users).
        "user_fold_in_basis": result.user_fold_in_basis,
        "item_fold_in_basis": result.item_fold_in_basis,
        "user_fold_in_scale": torch.tensor([result.user_fold_in_scales[fold_in]], dtype=torch.float32),
        "item_fold_in_scale": torch.tensor([result.item_fold_in_scales[fold_in]], dtype=torch.float32),
    }
    history = result.history.assign(model=model)
    logger.info(
        "%s: best epoch %d of %d, valid NDCG@20 %.4f, %.1fs",
        model, result.best_epoch, result.epochs_run, result.best_valid_metrics.get("NDCG@20", float("nan")),
        result.fit_seconds,
    )
    return embeddings, history, pd.concat(frames, ignore_index=True), _ranks_frame(results, model), history_to_mlflow(result.history, f"{model}.train")


def evaluate_popularity(interactions_split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pop (train interaction counts) on valid and test under the same evaluator."""
    frames, results = [], {}
    for split in ("valid", "test"):
        frame, results[split] = evaluate_pop(interactions_split, split=split)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), _ranks_frame(results, "pop")


def select_cf_embeddings(lightgcn_embeddings: dict, mf_embeddings: dict, cf_pretraining: dict) -> dict:
    """The embeddings the tokenizers learn from: ``cf_pretraining.model`` (lightgcn | mf)."""
    choice = cf_pretraining.get("model", "lightgcn")
    if choice not in ("lightgcn", "mf"):
        raise ValueError(f"cf_pretraining.model={choice!r} must be 'lightgcn' or 'mf'.")
    return lightgcn_embeddings if choice == "lightgcn" else mf_embeddings


def report_baselines(*metric_tables: pd.DataFrame) -> tuple[pd.DataFrame, str, dict]:
    """One metrics table for every baseline: long CSV, a Markdown (model x metric) table, and
    MLflow metrics named ``<model>.<split>.<user_group>.<metric>``."""
    long = pd.concat(metric_tables, ignore_index=True)
    wide = metrics_wide(long)
    mlflow_metrics = metrics_table_to_mlflow(long)
    for row in wide[wide["split"] == "test"].to_dict("records"):
        logger.info("test %-6s %-9s HR@20=%.4f NDCG@20=%.4f (%d users)", row["user_group"], row["model"],
                    row["HR@20"], row["NDCG@20"], row["n_users"])
    return long, markdown_table(wide), mlflow_metrics
