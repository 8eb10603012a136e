"""Turning the project's tables into what MLflow and humans read: metric dicts and Markdown."""

from __future__ import annotations

import pandas as pd


def mlflow_name(name: str) -> str:
    """A metric name MLflow accepts: no '@' or parentheses (``tokenrec (user_only)`` -> ``tokenrec.user_only``)."""
    return name.replace("@", "_at_").replace(" (", ".").replace(")", "")


def metrics_table_to_mlflow(long: pd.DataFrame) -> dict:
    """Long metrics table (model, split, user_group, metric, value) -> ``{model.split.group.metric: value}``
    in the layout kedro-mlflow's ``MlflowMetricsHistoryDataset`` saves."""
    return {
        mlflow_name(f"{r.model}.{r.split}.{r.user_group}.{r.metric}"): {"value": float(r.value), "step": 0}
        for r in long.itertuples()
    }


def history_to_mlflow(history: pd.DataFrame, prefix: str) -> dict:
    """Per-epoch training history (``epoch`` + one column per quantity) -> metric histories, step = epoch."""
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
