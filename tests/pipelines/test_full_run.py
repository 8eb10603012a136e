"""`kedro run --pipeline=full` end to end on a tiny synthetic configuration (real MiniLM backbone)."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tests.conftest import run_kedro

TINY = {
    "ingestion": {"synthetic": {"n_users": 120, "n_items": 60, "n_groups": 4, "mean_history": 12.0}},
    "cf_pretraining": {"lightgcn": {"epochs": 4, "patience": 2}, "mf": {"epochs": 4, "patience": 2}},
    "tokenizer": {"codebook_size": 8, "epochs": 3, "patience": 2, "hidden_dims": [32], "code_dim": 8},
    "prompting": {"max_prefixes_per_user": 1, "history_length": 5},
    "llm4rec": {"model": {"max_length": 48},
                "training": {"epochs": 1, "batch_size": 16, "samples_per_epoch": 32, "num_threads": 1}},
    "evaluation": {"latency_users": 16, "latency_single_users": 2},
}


@pytest.mark.slow
def test_full_pipeline_produces_every_row_and_one_mlflow_run(kedro_project):
    run_kedro(kedro_project, ["full"], TINY)

    table = pd.read_csv(kedro_project / "data/08_reporting/evaluation_metrics.csv")
    test = table[table["split"] == "test"]
    expected_models = {"pop", "mf", "lightgcn", "tokenrec", "tokenrec (unseen_prompt)", "tokenrec (user_only)"}
    for group in ("seen", "unseen"):
        assert set(test.loc[test["user_group"] == group, "model"]) == expected_models
    assert set(test["metric"]) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (10, 20, 30)}
    assert test["value"].between(0, 1).all()
    for artefact in ("evaluation_hr_ndcg.png", "evaluation_metrics.md", "tokenizer_diagnostics.csv",
                     "baseline_metrics.csv", "inference_latency.csv"):
        assert (kedro_project / "data/08_reporting" / artefact).stat().st_size > 0

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tokenrec_pipeline"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.tokenizer.quantizer"] == "mq"
    assert run["metrics.evaluation_metrics_mlflow.tokenrec.test.seen.HR_at_20"] == pytest.approx(
        test.query("model == 'tokenrec' and user_group == 'seen' and metric == 'HR@20'")["value"].item())
    assert "metrics.tokenizer_diagnostics_mlflow.tokenizer.item.collision_rate" in runs.columns
