"""Nodes of the preprocessing stage (thin wrappers over ``tokenrec_pipeline.data.preprocess``)."""

from __future__ import annotations

import logging

import pandas as pd

from tokenrec_pipeline.data.preprocess import (
    PreprocessingError,
    dataset_statistics,
    filter_k_core,
    split_by_strategy,
    to_implicit_feedback,
)

logger = logging.getLogger(__name__)


def make_implicit_feedback(interactions: pd.DataFrame, preprocessing: dict) -> pd.DataFrame:
    """Threshold ratings (``preprocessing.rating_threshold``, null keeps all) and dedupe pairs."""
    return to_implicit_feedback(interactions, preprocessing["rating_threshold"])


LAYERS_DIFFER = (
    "This run has already written interactions and implicit_interactions (data/02_intermediate), while "
    "k_core_interactions and everything after it (data/03_primary onwards) still hold the previous run's data: "
    "the layers now differ. Fix the parameter and rerun from ingestion (kedro run --pipeline=full) before using "
    "those artefacts; `recommend` refuses them until then."
)
"""Appended to a k-core failure: the error is raised after the earlier layers were rewritten."""


def apply_k_core(implicit_interactions: pd.DataFrame, preprocessing: dict) -> pd.DataFrame:
    """Iterative k-core with ``preprocessing.k_core``; a failure says that the data layers now differ."""
    try:
        return filter_k_core(implicit_interactions, int(preprocessing["k_core"]))
    except PreprocessingError as error:
        raise PreprocessingError(f"{error} {LAYERS_DIFFER}") from error


def split_interactions(
    k_core_interactions: pd.DataFrame, preprocessing: dict, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Contiguous ids, unseen-user holdout and the splits of ``preprocessing.split_strategy``:
    ``leave_one_out`` (per user) or ``global_temporal`` (cut-offs at ``preprocessing.temporal_cutoffs``
    quantiles of all timestamps)."""
    return split_by_strategy(
        k_core_interactions,
        preprocessing["split_strategy"],
        float(preprocessing["unseen_user_fraction"]),
        seed,
        preprocessing["temporal_cutoffs"],
    )


def summarise_dataset(interactions_split: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Statistics table + the same figures as MLflow metrics (``data.<scope>.<statistic>``)."""
    stats = dataset_statistics(interactions_split)
    metrics = {
        f"data.{row['scope']}.{column}": {"value": float(row[column]), "step": 0}
        for row in stats.to_dict("records")
        for column in ("users", "items", "interactions", "density", "mean_history")
    }
    overall = stats.iloc[0]
    logger.info(
        "Dataset: %d users, %d items, %d interactions (density %.4f%%)",
        overall["users"], overall["items"], overall["interactions"], 100 * overall["density"],
    )
    return stats, metrics
