"""The evaluation report node: any number of compared models, significance columns, paper columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tokenrec_pipeline.evaluation.ranking import DEFAULT_KS, expected_hit_rate, expected_ndcg
from tokenrec_pipeline.pipelines.evaluation.nodes import compare_with_reference, report_evaluation
from tokenrec_pipeline.reporting.paper_reference import load_paper_reference

EVALUATION = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_evaluation.yml").read_text())["evaluation"]
SETTINGS = {**EVALUATION, "significance": {**EVALUATION["significance"], "n_resamples": 200}}
ALL_BASELINES = ["pop", "mf", "lightgcn", "sasrec", "bert4rec", "autoregressive"]


def _model(name: str, n_greater: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A model's ranks table and its long metrics table, both from the same per-user counts."""
    n = len(n_greater)
    ranks = pd.DataFrame({"model": name, "split": "test", "user_group": "seen", "user_id": np.arange(n),
                          "target_item": 0, "rank": n_greater.astype(float), "n_greater": n_greater, "n_tied": 0})
    zeros = np.zeros(n, dtype=np.int64)
    long = pd.DataFrame([{"model": name, "split": "test", "user_group": "seen", "metric": f"{m}@{k}", "n_users": n,
                          "value": float(fn(n_greater, zeros, k).mean())}
                         for k in DEFAULT_KS for m, fn in (("HR", expected_hit_rate), ("NDCG", expected_ndcg))])
    return ranks, long


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    return {"tokenrec": _model("tokenrec", rng.integers(0, 25, 60)),
            "lightgcn": _model("lightgcn", rng.integers(0, 60, 60)),
            "autoregressive": _model("autoregressive", rng.integers(0, 40, 60))}


@pytest.fixture(scope="module")
def latency():
    return pd.DataFrame([{"model": "tokenrec", "batch_size": 64, "users": 60, "ms_per_user": 3.0}])


def test_significance_covers_every_ranks_table_given(models):
    empty = pd.DataFrame(columns=["model", "split", "user_group", "user_id", "target_item", "rank"])  # switched off
    table = compare_with_reference(SETTINGS, 0, ALL_BASELINES, *(ranks for ranks, _ in models.values()), empty)
    assert set(table["model"]) == set(models)
    ndcg = table[table["metric"] == "NDCG@20"].set_index("model")
    assert ndcg.loc["lightgcn", "value"] == pytest.approx(
        models["lightgcn"][1].query("metric == 'NDCG@20'")["value"].item())  # same means as the metrics table
    assert ndcg.loc["lightgcn", "mean_diff"] < 0 and 0 <= ndcg.loc["lightgcn", "p_wilcoxon"] < 0.05


def test_significance_leaves_out_switched_off_baselines_even_when_trained(models):
    """LightGCN off the list but trained for the tokenizers (ranks not empty): no row, like the metrics table."""
    ranks = [ranks for ranks, _ in models.values()]
    assert set(compare_with_reference(SETTINGS, 0, "pop mf", *ranks)["model"]) == {"tokenrec"}
    assert set(compare_with_reference(SETTINGS, 0, ["lightgcn"], *ranks)["model"]) == {"tokenrec", "lightgcn"}


def test_report_has_significance_and_paper_columns_only_for_paper_datasets(models, latency):
    significance = compare_with_reference(SETTINGS, 0, ALL_BASELINES, *(ranks for ranks, _ in models.values()))
    metric_tables = [long for _, long in models.values()]
    long, markdown, mlflow_metrics, _ = report_evaluation(latency, significance, load_paper_reference(), "lastfm",
                                                          *metric_tables)
    assert len(long) == 3 * 6 and set(long.columns) >= {"model", "split", "user_group", "metric", "value", "n_users"}
    assert "p Wilcoxon" in markdown and "HR@20 CI" in markdown
    assert "paper HR@20" in markdown and "0.0936" in markdown and "not directly comparable" in markdown
    assert mlflow_metrics["test.seen.lightgcn.NDCG_at_20.p_wilcoxon"]["value"] == pytest.approx(
        significance.query("model == 'lightgcn' and metric == 'NDCG@20'")["p_wilcoxon"].item())
    assert "test.seen.tokenrec.HR_at_20.ci_low" in mlflow_metrics

    _, synthetic_markdown, _, _ = report_evaluation(latency, significance, load_paper_reference(), "synthetic",
                                                    *metric_tables)
    assert "paper" not in synthetic_markdown
