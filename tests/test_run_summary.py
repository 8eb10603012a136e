"""Headline metrics and the quantizer comparison (Table VI layout) built from tables and MLflow's runs table."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tokenrec_pipeline.reporting.figures import quantizer_comparison_figure
from tokenrec_pipeline.reporting.run_summary import (
    HEADLINE_METRICS,
    best_baseline,
    headline_table,
    headline_to_mlflow,
    headlines_from_runs,
    quantizer_comparison,
)
from tokenrec_pipeline.reporting.tables import METRIC_NAME_PATTERN


def _long(values: dict[str, float]) -> pd.DataFrame:
    """A long metrics table: ``{"<model>|<group>|<metric>": value}`` on test (+ one valid row that must be ignored)."""
    rows = [{"model": key.split("|")[0], "split": "test", "user_group": key.split("|")[1], "metric": key.split("|")[2],
             "value": value} for key, value in values.items()]
    rows.append({"model": "pop", "split": "valid", "user_group": "seen", "metric": "NDCG@20", "value": 0.99})
    return pd.DataFrame(rows)


def _diagnostics(quantizer: str, item: float, user: float) -> pd.DataFrame:
    return pd.DataFrame([{"side": "user", "quantizer": quantizer, "collision_rate": user, "fit_seconds": 1.5},
                         {"side": "item", "quantizer": quantizer, "collision_rate": item, "fit_seconds": 2.0}])


METRICS = _long({
    **{f"tokenrec|{g}|{m}": v for g, m, v in [("seen", "HR@20", 0.5), ("seen", "NDCG@20", 0.3),
                                               ("unseen", "HR@20", 0.4), ("unseen", "NDCG@20", 0.2)]},
    "tokenrec (paper)|seen|NDCG@20": 0.9,  # a TokenRec variant is never the "best baseline"
    "pop|seen|HR@20": 0.2, "pop|seen|NDCG@20": 0.1,
    "lightgcn|seen|HR@20": 0.45, "lightgcn|seen|NDCG@20": 0.25, "lightgcn|unseen|HR@20": 0.3,
    "lightgcn|unseen|NDCG@20": 0.15,
})


def test_best_baseline_is_the_strongest_non_tokenrec_model_on_test():
    assert best_baseline(METRICS) == "lightgcn"
    assert best_baseline(METRICS[METRICS["model"].str.startswith("tokenrec")]) is None


def test_headline_row_and_its_mlflow_names():
    history = pd.DataFrame({"epoch": [0, 1, 2], "seconds": [1.0, 10.0, 11.0]})
    headline = headline_table(METRICS, _diagnostics("rqvae", 0.1, 0.3), history)
    row = headline.iloc[0]
    assert row["quantizer"] == "rqvae" and row["best_baseline"] == "lightgcn"
    assert row["tokenrec unseen NDCG@20"] == 0.2 and row["best_baseline seen HR@20"] == 0.45
    assert row["tokenizer fit seconds"] == 3.5 and row["llm4rec train seconds"] == 22.0
    metrics = headline_to_mlflow(headline)
    assert tuple(metrics) == HEADLINE_METRICS  # every headline metric, in the documented order
    assert metrics["headline.test.seen.tokenrec.HR_at_20"] == {"value": 0.5, "step": 0}
    assert metrics["headline.tokenizer.item.collision_rate"]["value"] == 0.1
    assert all(METRIC_NAME_PATTERN.match(name) for name in metrics)


def test_a_run_without_baselines_logs_the_rest_of_the_headline():
    headline = headline_table(METRICS[METRICS["model"] == "tokenrec"], _diagnostics("mq", 0.1, 0.3), pd.DataFrame())
    assert headline.iloc[0]["best_baseline"] == "" and math.isnan(headline.iloc[0]["llm4rec train seconds"])
    names = set(headline_to_mlflow(headline))
    assert "headline.test.seen.tokenrec.HR_at_20" in names and not any("best_baseline" in n for n in names)


@pytest.mark.parametrize("name", ["evaluation_metrics_mlflow.tokenrec.test.seen.HR_at_20",
                                  "tokenrec.test.seen.HR_at_20",
                                  "tokenizer_diagnostics_mlflow.tokenizer.item.collision_rate", "lightgcn.train.loss"])
def test_old_metric_names_do_not_match_the_scheme(name):
    assert not METRIC_NAME_PATTERN.match(name)


def test_quantizer_comparison_from_mlflow_runs_keeps_the_latest_run_per_quantizer():
    def run(run_id: str, quantizer: str, start: int, hr: float) -> dict:
        return {"run_id": run_id, "start_time": pd.Timestamp(start, unit="s"), "tags.quantizer": quantizer,
                "tags.dataset": "synthetic", "tags.mlflow.runName": f"full · synthetic · {quantizer} · default",
                **{f"metrics.{name}": 0.01 for name in HEADLINE_METRICS},
                "metrics.headline.test.seen.tokenrec.HR_at_20": hr}

    runs = pd.DataFrame([run("a", "kmeans", 1, 0.1), run("b", "mq", 2, 0.2), run("c", "kmeans", 3, 0.3),
                         {"run_id": "d", "start_time": pd.Timestamp(4, unit="s"), "tags.quantizer": "vqvae"}])
    table = quantizer_comparison(headlines_from_runs(runs))
    assert list(table["quantizer"]) == ["mq", "kmeans"]  # Table VI order; the run without a headline left out
    assert list(table["tokenrec seen HR@20"]) == [0.2, 0.3] and list(table["run_id"]) == ["b", "c"]
    fig = quantizer_comparison_figure(table)
    assert {trace.name for trace in fig.data} >= {"TokenRec HR@20", "best baseline NDCG@20", "item collisions"}
    assert list(fig.data[0].x) == ["mq", "kmeans"]
