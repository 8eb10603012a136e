"""Nodes of the baselines stage (model code in ``tokenrec_pipeline.models.cf`` / ``.sequential``; the registry,
the CF training node and the baseline report in ``tokenrec_pipeline.core.baselines``)."""

from __future__ import annotations

import logging

import pandas as pd

from tokenrec_pipeline.core.baselines import (
    baseline_enabled,
    ranks_frame,
    report_baselines,
    skipped_baseline_tables,
    train_cf_model,
)
from tokenrec_pipeline.models.cf import evaluate_pop
from tokenrec_pipeline.models.sequential import SequentialConfig, evaluate_sequential, train_sequential_from_splits
from tokenrec_pipeline.reporting.tables import history_to_mlflow

logger = logging.getLogger(__name__)

__all__ = ["evaluate_popularity", "report_baselines", "train_cf_model", "train_sequential_baseline"]


def evaluate_popularity(interactions_split: pd.DataFrame,
                        enabled: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pop (train interaction counts) on valid and test under the same evaluator (empty tables when
    ``pop`` is not in ``baselines.enabled``)."""
    if enabled is not None and not baseline_enabled("pop", enabled):
        logger.info("pop is off (not in baselines.enabled): skipped.")
        return skipped_baseline_tables()
    frames, results = [], {}
    for split in ("valid", "test"):
        frame, results[split] = evaluate_pop(interactions_split, split=split)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), ranks_frame(results, "pop")


def train_sequential_baseline(
    interactions_split: pd.DataFrame, sequential_model: dict, enabled: list[str], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train SASRec or BERT4Rec (``sequential_model.model``) on the seen users' train sequences,
    early-stopped on validation NDCG@20, then evaluate the selected epoch on valid and test: seen
    users, and unseen users from their histories alone (no retraining).

    When the model is not in ``baselines.enabled`` nothing is trained and every output is empty.

    Returns:
        (metrics, ranks, training_history, training_curves): the long metrics table and per-user
        ranks in the layout of the CF baselines, the per-epoch history (loss, validation metrics)
        and the same history as MLflow metric curves ``train.<model>.<quantity>``.
    """
    config = SequentialConfig.from_dict({**sequential_model, "seed": seed})
    model = config.model
    if not baseline_enabled(model, enabled):
        logger.info("%s is off (not in baselines.enabled): not trained.", model)
        metrics, ranks = skipped_baseline_tables()
        return metrics, ranks, pd.DataFrame(columns=["epoch", "loss", "model"]), {}
    result = train_sequential_from_splits(interactions_split, config)
    frames, results = [], {}
    for split in ("valid", "test"):
        frame, results[split] = evaluate_sequential(result, interactions_split, split=split)
        frames.append(frame)
    logger.info("%s: best epoch %d of %d, valid NDCG@20 %.4f, %.1fs", model, result.best_epoch, result.epochs_run,
                result.best_valid_metrics.get("NDCG@20", float("nan")), result.fit_seconds)
    return (pd.concat(frames, ignore_index=True), ranks_frame(results, model), result.history.assign(model=model),
            history_to_mlflow(result.history, f"train.{model}"))
