"""MLflow metric names and curves built from the project's tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tokenrec_pipeline.reporting.tables import history_to_mlflow, markdown_table, metrics_table_to_mlflow

VALID_MLFLOW_NAME = re.compile(r"^[\w\-. /]+$")


def test_metric_names_are_valid_for_mlflow_and_keep_values():
    long = pd.DataFrame({"model": ["tokenrec (user_only)", "pop"], "split": ["test", "valid"],
                         "user_group": ["unseen", "seen"], "metric": ["HR@20", "NDCG@10"], "value": [0.25, 0.1]})
    metrics = metrics_table_to_mlflow(long)
    assert metrics == {"test.unseen.tokenrec.user_only.HR_at_20": {"value": 0.25, "step": 0},
                       "valid.seen.pop.NDCG_at_10": {"value": 0.1, "step": 0}}
    assert all(VALID_MLFLOW_NAME.match(name) for name in metrics)


def test_history_curves_skip_epochs_without_validation():
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.5, 0.4, 0.3], "valid_NDCG@20": [np.nan, 0.2, np.nan]})
    curves = history_to_mlflow(history, "train.lightgcn")
    assert curves["train.lightgcn.loss"] == [
        {"value": 0.5, "step": 1}, {"value": 0.4, "step": 2}, {"value": 0.3, "step": 3}
    ]
    assert curves["train.lightgcn.valid_NDCG_at_20"] == [{"value": 0.2, "step": 2}]


def test_markdown_table_formats_floats():
    assert markdown_table(pd.DataFrame({"model": ["pop"], "HR@20": [0.18444]})) == (
        "| model | HR@20 |\n| --- | --- |\n| pop | 0.1844 |\n")
