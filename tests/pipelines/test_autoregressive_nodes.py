"""Node-level checks of the autoregressive baseline stage (the model itself: tests/models/test_autoregressive.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tokenrec_pipeline.io.datasets import SkippedModel
from tokenrec_pipeline.pipelines.autoregressive.nodes import (
    evaluate_autoregressive_model,
    item_code_table,
    train_autoregressive_model,
)


def test_item_code_table_orders_rows_by_item_id_and_codebook():
    tokens = pd.DataFrame({"id": [1, 0], "token_2": [5, 7], "token_1": [3, 4], "tokens": ["x", "y"]})
    np.testing.assert_array_equal(item_code_table(tokens), [[4, 7], [3, 5]])
    with pytest.raises(ValueError, match="0..I-1"):
        item_code_table(tokens.assign(id=[2, 0]))
    with pytest.raises(ValueError, match="token_<k>"):
        item_code_table(tokens[["id", "tokens"]])


def test_switched_off_baseline_trains_nothing_and_reports_no_rows():
    model, history, curves = train_autoregressive_model(
        pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), None, None, {}, {}, ["pop", "lightgcn"], 0)
    assert model == SkippedModel() and history.empty and curves == {}
    metrics, ranks, summary = evaluate_autoregressive_model(model, pd.DataFrame(), pd.DataFrame(), {})
    assert metrics.empty and ranks.empty and summary.empty
    assert {"model", "metric", "value"} <= set(metrics.columns)
