"""Turning the project's tables into what MLflow and humans read: metric dicts and Markdown."""

from __future__ import annotations

import re

import pandas as pd


def mlflow_name(name: str) -> str:
    """A metric name MLflow accepts: no '@' or parentheses (``tokenrec (user_only)`` -> ``tokenrec.user_only``)."""
    return name.replace("@", "_at_").replace(" (", ".").replace(")", "")


def metric_key(split: str, user_group: str, model: str, metric: str) -> str:
    """The project's one metric-name scheme for ranking metrics: ``<split>.<user_group>.<model>.<metric>``
    (``test.seen.tokenrec.HR_at_20``, ``test.unseen.tokenrec.user_only.NDCG_at_20``): sorting by name groups a
    split and a user group, then a model's metrics side by side."""
    return mlflow_name(f"{split}.{user_group}.{model}.{metric}")


def metrics_table_to_mlflow(long: pd.DataFrame) -> dict:
    """Long metrics table (model, split, user_group, metric, value) -> ``{<split>.<group>.<model>.<metric>: value}``
    (:func:`metric_key`) in the layout kedro-mlflow's ``MlflowMetricsHistoryDataset`` saves."""
    return {
        metric_key(r.split, r.user_group, r.model, r.metric): {"value": float(r.value), "step": 0}
        for r in long.itertuples()
    }


def history_to_mlflow(history: pd.DataFrame, prefix: str) -> dict:
    """Per-epoch training history (``epoch`` + one column per quantity) -> metric histories, step = epoch,
    named ``<prefix>.<quantity>`` (the callers' prefix is ``train.<model>``: ``train.lightgcn.loss``)."""
    return {
        mlflow_name(f"{prefix}.{column}"): [{"value": float(v), "step": int(e)}
                                            for e, v in history[["epoch", column]].dropna().to_numpy()]
        for column in history.columns if column != "epoch" and pd.api.types.is_numeric_dtype(history[column])
    }


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub Markdown table of ``frame`` (no extra dependency)."""
    cells = [[format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
             for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


METRIC_NAME_PATTERN = re.compile(
    r"^(headline\.)?("
    r"(valid|test)\.(seen|unseen)\.[a-z0-9_.]+\.(HR|NDCG)_at_\d+(\.(ci_low|ci_high|p_wilcoxon|p_ttest|mean_diff))?"
    r"|train\.[a-z0-9_]+\.\w+"
    r"|tokenizer\.((user|item)\.\w+|fit_seconds)"
    r"|data\.\w+\.\w+"
    r"|latency\.\w+\.batch_\d+\.ms_per_user"
    r")$")
"""Every MLflow metric the project logs matches this (the scheme in ``conf/base/catalog.yml``): the scope first
(``test``/``valid`` split and user group, ``train``, ``tokenizer``, ``data``, ``latency``, or ``headline.`` and
one of those), never a dataset name."""
