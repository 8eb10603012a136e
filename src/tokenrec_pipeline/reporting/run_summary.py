"""A run's headline numbers and the quantizer comparison (the paper's Table VI layout) built from them.

Plain functions over the project's tables and MLflow's runs table (``mlflow.search_runs``), importable without
Kedro: the evaluation stage logs the headline, the reporting stage, the quantizer sweep and
``notebooks/02_compare_quantizers.ipynb`` put the headlines of several runs side by side.
"""

from __future__ import annotations

import math

import pandas as pd

from tokenrec_pipeline.reporting.tables import metric_key, mlflow_name

HEADLINE_PREFIX = "headline"
"""Every headline metric is ``headline.<name in the project's scheme>``: pick them all in the MLflow runs
table by typing ``headline`` in its column chooser."""

HEADLINE_MODELS = ("tokenrec", "best_baseline")
HEADLINE_GROUPS = ("seen", "unseen")
HEADLINE_RANKING = ("HR@20", "NDCG@20")

HEADLINE_COLUMNS = {
    **{f"{model} {group} {metric}": metric_key("test", group, model, metric)
       for model in HEADLINE_MODELS for group in HEADLINE_GROUPS for metric in HEADLINE_RANKING},
    "item collision rate": "tokenizer.item.collision_rate",
    "user collision rate": "tokenizer.user.collision_rate",
    "tokenizer fit seconds": "tokenizer.fit_seconds",
    "llm4rec train seconds": "train.llm4rec.seconds",
}
"""Headline table column -> metric name (below ``headline.``), in the order the runs table should show them."""

HEADLINE_METRICS = tuple(f"{HEADLINE_PREFIX}.{name}" for name in HEADLINE_COLUMNS.values())
"""The MLflow metric names every run with an evaluation stage logs (``headline.test.seen.tokenrec.HR_at_20``, ...)."""

TABLE_VI_COLUMNS = [f"{model} {group} {metric}" for model in HEADLINE_MODELS for group in HEADLINE_GROUPS
                    for metric in HEADLINE_RANKING] + ["item collision rate", "user collision rate",
                                                       "tokenizer fit seconds", "llm4rec train seconds"]


def _value(long: pd.DataFrame, model: str, group: str, metric: str) -> float:
    rows = long[(long["model"] == model) & (long["split"] == "test") & (long["user_group"] == group)
                & (long["metric"] == metric)]
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def best_baseline(evaluation_metrics: pd.DataFrame, metric: str = "NDCG@20", group: str = "seen") -> str | None:
    """The compared model (every row that is not a TokenRec variant) with the highest test ``metric`` for
    ``group`` users; ``None`` when the run has no baseline row. The strongest baseline on test is the
    hardest comparison for TokenRec, which is why it is picked on test (it selects nothing that is trained)."""
    rows = evaluation_metrics[(evaluation_metrics["split"] == "test") & (evaluation_metrics["user_group"] == group)
                              & (evaluation_metrics["metric"] == metric)
                              & ~evaluation_metrics["model"].str.startswith("tokenrec")]
    rows = rows.dropna(subset=["value"])
    return None if rows.empty else str(rows.loc[rows["value"].idxmax(), "model"])


def headline_table(evaluation_metrics: pd.DataFrame, tokenizer_diagnostics: pd.DataFrame,
                   llm4rec_training_history: pd.DataFrame) -> pd.DataFrame:
    """One row: the run's quantizer, TokenRec and the best baseline (:func:`best_baseline`) on test HR@20 /
    NDCG@20 for seen and unseen users, item and user token collision rates, the tokenizers' fit seconds
    (user + item) and the language model's training seconds (every epoch, validation included)."""
    baseline = best_baseline(evaluation_metrics)
    diagnostics = tokenizer_diagnostics.set_index("side")
    row: dict = {"quantizer": str(tokenizer_diagnostics["quantizer"].iloc[0]), "best_baseline": baseline or ""}
    for model in HEADLINE_MODELS:
        name = "tokenrec" if model == "tokenrec" else baseline
        for group in HEADLINE_GROUPS:
            for metric in HEADLINE_RANKING:
                row[f"{model} {group} {metric}"] = _value(evaluation_metrics, name, group, metric) if name else math.nan
    for side in ("item", "user"):
        row[f"{side} collision rate"] = float(diagnostics.loc[side, "collision_rate"])
    row["tokenizer fit seconds"] = float(diagnostics["fit_seconds"].sum())
    seconds = llm4rec_training_history.get("seconds")
    row["llm4rec train seconds"] = float(seconds.sum()) if seconds is not None else math.nan
    return pd.DataFrame([row])


def headline_to_mlflow(headline: pd.DataFrame) -> dict:
    """``headline.<name>`` metrics of a :func:`headline_table` row (missing values, e.g. no baseline, left out)."""
    row = headline.iloc[0]
    return {f"{HEADLINE_PREFIX}.{name}": {"value": float(row[column]), "step": 0}
            for column, name in HEADLINE_COLUMNS.items() if pd.notna(row[column])}


def headlines_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Headline rows (the :func:`headline_table` layout plus ``run_name``, ``run_id``, ``dataset``, ``recipe``,
    ``start_time``) of every run in an ``mlflow.search_runs`` table that logged the headline metrics."""
    first = f"metrics.{HEADLINE_METRICS[0]}"
    if runs.empty or first not in runs:
        return pd.DataFrame(columns=["quantizer", "run_name", "run_id", "dataset", "recipe", "start_time",
                                     "best_baseline", *TABLE_VI_COLUMNS])
    runs = runs[runs[first].notna()]

    def column(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series("", index=runs.index)

    table = pd.DataFrame({
        "quantizer": column("tags.quantizer"), "run_name": column("tags.mlflow.runName"), "run_id": runs["run_id"],
        "dataset": column("tags.dataset"), "recipe": column("tags.recipe"), "start_time": runs["start_time"],
        "best_baseline": column("tags.best_baseline"),
    })
    for label, name in HEADLINE_COLUMNS.items():
        key = f"metrics.{HEADLINE_PREFIX}.{mlflow_name(name)}"
        table[label] = runs.get(key, math.nan)
    return table.reset_index(drop=True)


def quantizer_comparison(headlines: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table VI layout: one row per quantizer (``mq``, ``rqvae``, ``vqvae``, ``kmeans`` first, in that
    order), TokenRec's test HR@20 / NDCG@20 for seen and unseen users, the best baseline's beside them, and the
    token collision rates. Several rows of one quantizer (e.g. runs from MLflow): the latest (``start_time``) wins."""
    table = headlines.copy()
    if "start_time" in table and len(table):
        table = table.sort_values("start_time").drop_duplicates("quantizer", keep="last")
    order = {name: i for i, name in enumerate(("mq", "rqvae", "vqvae", "kmeans"))}
    table = (table.assign(_order=table["quantizer"].map(lambda v: order.get(v, len(order))))
             .sort_values(["_order", "quantizer"]))
    extra = [c for c in ("best_baseline", "run_name", "run_id") if c in table]
    return table[["quantizer", *TABLE_VI_COLUMNS, *extra]].reset_index(drop=True)
