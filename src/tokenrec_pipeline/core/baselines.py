"""The one registry of the models compared with TokenRec (the rows ``baselines.enabled`` switches), and the
helpers every stage that trains or reports one of them shares (no Kedro imports).

Each :class:`Baseline` says which stage (registered pipeline, Kedro namespace) trains it, and whether its rows
go into the ``baselines`` stage's table ``baseline_metrics`` or straight into ``evaluation_metrics``. A model
writes ``<name>.metrics`` and ``<name>.ranks`` (empty tables when switched off: :func:`skipped_baseline_tables`).

Adding a baseline: one :class:`Baseline` in :data:`BASELINES` (its place there is its row's place in the
tables), its ``baselines.enabled`` entry in ``conf/base/parameters_baselines.yml`` with its settings, and its
node in the stage named by ``stage`` (``pipelines/baselines/pipeline.py`` for most); the baseline table reads
``<name>.metrics`` of every ``in_baseline_table`` entry, and the evaluation's significance table reads
``<name>.ranks`` of every entry (:func:`ranks_datasets`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch

from tokenrec_pipeline.core.artefacts import FOLD_IN_KEY, encode_fold_in_method
from tokenrec_pipeline.evaluation.ranking import (
    METRIC_COLUMNS,
    RANK_COLUMNS,
    RankingResult,
    eval_inputs_from_splits,
    metrics_wide,
    ranks_to_frame,
)
from tokenrec_pipeline.models.cf import CFConfig, evaluate_cf, train_cf_from_splits
from tokenrec_pipeline.reporting.tables import history_to_mlflow, markdown_table, metrics_table_to_mlflow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Baseline:
    """One model compared with TokenRec.

    Attributes:
        name: its ``baselines.enabled`` entry and the prefix of its datasets (``<name>.metrics``, ``<name>.ranks``).
        label: how figures and documents name it.
        stage: the registered pipeline (and Kedro namespace) that trains it.
        in_baseline_table: its rows are in ``baseline_metrics`` (the ``baselines`` stage's report); the others
            reach ``evaluation_metrics`` from their own stage.
        model: the ``model`` column of its metrics and ranks (default: ``name``).
    """

    name: str
    label: str
    stage: str
    in_baseline_table: bool = True
    model: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", self.name)


BASELINES: tuple[Baseline, ...] = (
    Baseline("pop", "Pop", "baselines"),
    Baseline("mf", "BPR-MF", "baselines"),
    Baseline("lightgcn", "LightGCN", "cf_pretraining"),  # the tokenizers' teacher; its rows as a baseline
    Baseline("sasrec", "SASRec", "baselines"),
    Baseline("bert4rec", "BERT4Rec", "baselines"),
    Baseline("autoregressive", "Autoregressive (P5-style)", "autoregressive", in_baseline_table=False),
    Baseline("tokenrec_paper", "TokenRec (paper's recipe)", "llm4rec", in_baseline_table=False,
             model="tokenrec (paper)"),
)
"""Every baseline, in the order of the tables' rows."""

BASELINE_NAMES: tuple[str, ...] = tuple(b.name for b in BASELINES)
"""Names ``baselines.enabled`` may list."""

CF_MODELS: tuple[str, ...] = ("lightgcn", "mf")
"""The CF models whose embeddings the tokenizers may learn from (``cf_pretraining.model``)."""


def get_baseline(name: str) -> Baseline:
    """The registry entry named ``name`` (a ``KeyError`` naming the known ones otherwise)."""
    for baseline in BASELINES:
        if baseline.name == name:
            return baseline
    raise KeyError(f"No baseline {name!r}; known: {list(BASELINE_NAMES)}.")


def trained_by(stage: str) -> tuple[str, ...]:
    """Names of the baselines the stage ``stage`` trains, in registry order."""
    return tuple(b.name for b in BASELINES if b.stage == stage)


def baseline_table_models() -> tuple[str, ...]:
    """Names of the baselines whose rows make up ``baseline_metrics``, in row order."""
    return tuple(b.name for b in BASELINES if b.in_baseline_table)


def metrics_datasets() -> list[str]:
    """``<name>.metrics`` of every :func:`baseline_table_models` entry: the inputs of :func:`report_baselines`."""
    return [f"{name}.metrics" for name in baseline_table_models()]


def ranks_datasets() -> list[str]:
    """``<name>.ranks`` of every baseline, in registry order: the evaluation's per-user ranks of the baselines."""
    return [f"{name}.ranks" for name in BASELINE_NAMES]


def enabled_baselines(enabled: list[str] | str) -> list[str]:
    """``baselines.enabled`` as a list of names; a string (``--params "baselines.enabled=pop lightgcn"``)
    is split on spaces and commas. Unknown names are an error, not a silent no-op."""
    names = enabled.replace(",", " ").split() if isinstance(enabled, str) else list(enabled or [])
    unknown = sorted(set(names) - set(BASELINE_NAMES))
    if unknown:
        raise ValueError(f"baselines.enabled lists unknown baseline(s) {unknown}; choose from {list(BASELINE_NAMES)}.")
    return names


def baseline_enabled(name: str, enabled: list[str] | str) -> bool:
    """Whether ``name`` is in ``baselines.enabled`` (validated by :func:`enabled_baselines`)."""
    return name in enabled_baselines(enabled)


def switched_off_models(enabled: list[str] | str) -> set[str]:
    """The ``model`` column values of the baselines left out of ``baselines.enabled``."""
    names = set(enabled_baselines(enabled))
    return {b.model for b in BASELINES if b.name not in names}


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

    The node of ``cf_pretraining`` (LightGCN, the tokenizers' teacher) and of ``baselines`` (MF). A model that is
    neither in ``baselines.enabled`` nor ``cf_pretraining.model`` (whose embeddings the tokenizers need) is not
    trained: every output is empty and the log says so.

    Returns:
        (cf_embeddings, training_history, metrics, ranks, training_curves):
        ``cf_embeddings`` holds ``user_embeddings`` (seen users), ``unseen_user_embeddings``
        (folded in from their histories, no retraining), ``item_embeddings`` and the train
        degrees ``user_degree`` / ``item_degree``.
    """
    config = CFConfig.from_dict({**cf_model, "seed": seed})
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
    return (embeddings, history, pd.concat(frames, ignore_index=True), ranks_frame(results, model),
            history_to_mlflow(result.history, f"train.{model}"))


def report_baselines(enabled: list[str] | str, *metric_tables: pd.DataFrame) -> tuple[pd.DataFrame, str, dict]:
    """One metrics table for the baselines in ``baselines.enabled`` (the :func:`baseline_table_models`: Pop,
    MF, LightGCN, SASRec, BERT4Rec): long CSV, a Markdown (model x metric) table, and MLflow metrics named
    ``<split>.<user_group>.<model>.<metric>``. Rows of switched-off baselines are dropped (the CF model the
    tokenizers use is trained anyway, but its row only appears when it is enabled)."""
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
