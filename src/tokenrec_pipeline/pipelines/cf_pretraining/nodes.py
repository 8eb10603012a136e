"""Nodes of the CF pretraining stage (model code lives in ``tokenrec_pipeline.models.cf``)."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from tokenrec_pipeline.core.artefacts import FOLD_IN_KEY, encode_fold_in_method
from tokenrec_pipeline.models.cf import (
    CFConfig,
    evaluate_cf,
    evaluate_pop,
    train_cf_from_splits,
)
from tokenrec_pipeline.models.evaluation import (
    METRIC_COLUMNS,
    RANK_COLUMNS,
    RankingResult,
    eval_inputs_from_splits,
    metrics_wide,
    ranks_to_frame,
)
from tokenrec_pipeline.reporting import history_to_mlflow, markdown_table, metrics_table_to_mlflow

logger = logging.getLogger(__name__)

BASELINES = ("pop", "mf", "lightgcn", "sasrec", "bert4rec", "autoregressive", "tokenrec_paper")
"""Names ``baselines.enabled`` may list (rows of the baseline table)."""


def enabled_baselines(enabled: list[str] | str) -> list[str]:
    """``baselines.enabled`` as a list of names; a string (``--params "baselines.enabled=pop lightgcn"``)
    is split on spaces and commas. Unknown names are an error, not a silent no-op."""
    names = enabled.replace(",", " ").split() if isinstance(enabled, str) else list(enabled or [])
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"baselines.enabled lists unknown baseline(s) {unknown}; choose from {list(BASELINES)}.")
    return names


def baseline_enabled(name: str, enabled: list[str] | str) -> bool:
    """Whether ``name`` is in ``baselines.enabled`` (validated by :func:`enabled_baselines`)."""
    return name in enabled_baselines(enabled)


def cf_model_trained(name: str, enabled: list[str] | str | None, selected_model: str | None) -> bool:
    """Whether the CF model ``name`` is trained: it is in ``baselines.enabled`` or it is
    ``cf_pretraining.model``, whose embeddings the tokenizers need (``enabled=None``: every model)."""
    return enabled is None or baseline_enabled(name, enabled) or name == selected_model


def skipped_baseline_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The empty (metrics, ranks) tables a switched-off baseline writes, so no stale rows survive."""
    return pd.DataFrame(columns=list(METRIC_COLUMNS)), pd.DataFrame(columns=list(RANK_COLUMNS))


def ranks_frame(results: dict[str, dict[str, RankingResult]], model: str) -> pd.DataFrame:
    """Per-user ranks of every (split, user group), for the paired significance tests (the exact tie
    counts behind ``rank`` included, so per-user HR/NDCG follow the evaluator's tie rule)."""
    return pd.concat([ranks_to_frame(groups, model=model, split=split) for split, groups in results.items()],
                     ignore_index=True)


def train_cf_model(
    interactions_split: pd.DataFrame, cf_model: dict, fold_in: str, seed: int,
    enabled: list[str] | None = None, selected_model: str | None = None,
) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Train one CF model (LightGCN or MF) on the train split, early-stopped on validation
    NDCG@20, then evaluate the selected epoch on valid and test (seen + folded-in unseen users).

    A model that is neither in ``baselines.enabled`` nor ``cf_pretraining.model`` (whose embeddings
    the tokenizers need) is not trained: every output is empty and the log says so.

    Returns:
        (cf_embeddings, training_history, metrics, ranks, training_curves):
        ``cf_embeddings`` holds ``user_embeddings`` (seen users), ``unseen_user_embeddings``
        (folded in from their histories, no retraining), ``item_embeddings`` and the train
        degrees ``user_degree`` / ``item_degree``.
    """
    config = CFConfig(**{**cf_model, "seed": seed})
    model = config.model
    if not cf_model_trained(model, enabled, selected_model):
        logger.info("%s is off (not in baselines.enabled and not cf_pretraining.model): not trained.", model)
        metrics, ranks = skipped_baseline_tables()
        return {}, pd.DataFrame(columns=["epoch", "loss", "model"]), metrics, ranks, {}
    result = train_cf_from_splits(interactions_split, config)
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
        # The rule those scales are for: serving folds new users / items in with it, as evaluated.
        FOLD_IN_KEY: encode_fold_in_method(fold_in),
    }
    history = result.history.assign(model=model)
    logger.info(
        "%s: best epoch %d of %d, valid NDCG@20 %.4f, %.1fs",
        model, result.best_epoch, result.epochs_run, result.best_valid_metrics.get("NDCG@20", float("nan")),
        result.fit_seconds,
    )
    return embeddings, history, pd.concat(frames, ignore_index=True), ranks_frame(results, model), history_to_mlflow(result.history, f"train.{model}")


def evaluate_popularity(interactions_split: pd.DataFrame, enabled: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def select_cf_embeddings(lightgcn_embeddings: dict, mf_embeddings: dict, cf_pretraining: dict) -> dict:
    """The embeddings the tokenizers learn from: ``cf_pretraining.model`` (lightgcn | mf)."""
    choice = cf_pretraining.get("model", "lightgcn")
    if choice not in ("lightgcn", "mf"):
        raise ValueError(f"cf_pretraining.model={choice!r} must be 'lightgcn' or 'mf'.")
    chosen = lightgcn_embeddings if choice == "lightgcn" else mf_embeddings
    if not chosen:
        raise ValueError(f"{choice}.cf_embeddings is empty: the {choice} model was not trained in this run.")
    return chosen


def report_baselines(enabled: list[str], *metric_tables: pd.DataFrame) -> tuple[pd.DataFrame, str, dict]:
    """One metrics table for the baselines in ``baselines.enabled`` (Pop, MF, LightGCN, SASRec,
    BERT4Rec): long CSV, a Markdown (model x metric) table, and MLflow metrics named
    ``<model>.<split>.<user_group>.<metric>``. Rows of switched-off baselines are dropped (the CF
    model the tokenizers use is trained anyway, but its row only appears when it is enabled)."""
    names = enabled_baselines(enabled)
    tables = [t for t in metric_tables if len(t)]  # switched-off baselines hand over empty tables
    long = pd.concat(tables, ignore_index=True) if tables else skipped_baseline_tables()[0]
    long = long[long["model"].isin(names)].reset_index(drop=True)
    if long.empty:
        logger.info("baselines.enabled is empty: no baseline rows in this run.")
        return long, "No baseline enabled (`baselines.enabled` is empty).\n", {}
    wide = metrics_wide(long)
    mlflow_metrics = metrics_table_to_mlflow(long)
    for row in wide[wide["split"] == "test"].to_dict("records"):
        logger.info("test %-6s %-9s HR@20=%.4f NDCG@20=%.4f (%d users)", row["user_group"], row["model"],
                    row["HR@20"], row["NDCG@20"], row["n_users"])
    return long, markdown_table(wide), mlflow_metrics
