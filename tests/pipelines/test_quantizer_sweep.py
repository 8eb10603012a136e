"""`kedro run --pipeline=quantizer_sweep` after a tiny full run: one complete MLflow child run per quantizer, the
CF model and the baselines reused (not retrained), one Table VI of the four quantizers."""

from __future__ import annotations

import hashlib

import mlflow
import pandas as pd
import pytest

from tests.conftest import run_kedro_cli
from tokenrec_pipeline.pipeline_registry import SWEEP_QUANTIZERS, register_pipelines
from tokenrec_pipeline.reporting.run_summary import HEADLINE_METRICS
from tokenrec_pipeline.reporting.tables import METRIC_NAME_PATTERN

SHARED_ARTEFACTS = ("data/06_models/cf/cf_embeddings.safetensors", "data/06_models/cf/lightgcn_embeddings.safetensors",
                    "data/03_primary/interactions_split.parquet", "data/08_reporting/baseline_metrics.csv",
                    "data/07_model_output/ranks/lightgcn_ranks.parquet")


def _fingerprints(project, paths) -> dict[str, tuple[str, int]]:
    """SHA-256 and modification time (ns) of each file: a retrained or rewritten artefact changes one or both."""
    return {path: (hashlib.sha256((project / path).read_bytes()).hexdigest(), (project / path).stat().st_mtime_ns)
            for path in paths}


def test_sweep_branches_read_only_tokenizer_independent_artefacts():
    """No branch trains or rewrites what the full run made: its free inputs are the split, the CF embeddings
    and the baselines' tables, and none of its nodes writes them."""
    sweep = register_pipelines()["quantizer_sweep"]
    data_inputs = {name for name in sweep.inputs() if not name.startswith("params:")}
    assert data_inputs == {"interactions_split", "cf_embeddings", "baseline_metrics", "paper_reference",
                           "pop.ranks", "mf.ranks", "lightgcn.ranks", "sasrec.ranks", "bert4rec.ranks"}
    assert not {node.name for node in sweep.nodes if "train_cf_model" in node.name or "baseline" in node.func.__name__}
    for quantizer in SWEEP_QUANTIZERS:
        assert f"params:quantizer_sweep.{quantizer}.tokenizer.quantizer" in sweep.inputs()
        assert f"quantizer_sweep.{quantizer}.headline_metrics_mlflow" in sweep.all_outputs()


@pytest.mark.slow
def test_sweep_makes_one_complete_child_run_per_quantizer_without_retraining(tiny_full_copy):
    kedro_project = tiny_full_copy
    before = _fingerprints(kedro_project, SHARED_ARTEFACTS)
    # the P5-style baseline and the paper's recipe left out to keep the test short (they are skipped per branch)
    run_kedro_cli(kedro_project, "--pipeline=quantizer_sweep",
                  "--params=baselines.enabled=pop mf lightgcn sasrec bert4rec")
    assert _fingerprints(kedro_project, SHARED_ARTEFACTS) == before  # CF model and baselines not retrained

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tokenrec_pipeline"])
    sweep = runs["tags.mlflow.runName"].str.startswith("quantizer_sweep")
    parent = runs[sweep & runs["tags.mlflow.parentRunId"].isna()]
    assert len(parent) == 1 and parent["tags.mlflow.runName"].item() == (
        "quantizer_sweep · synthetic · mq+rqvae+vqvae+kmeans · default")
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].item()].set_index("tags.quantizer")
    assert sorted(children.index) == sorted(SWEEP_QUANTIZERS)
    assert (children["status"] == "FINISHED").all()
    full = runs[runs["tags.mlflow.runName"] == "full · synthetic · mq · default"]
    assert len(full) == 1
    for quantizer, child in children.iterrows():
        assert child["tags.mlflow.runName"] == f"quantizer_sweep · synthetic · {quantizer} · default"
        assert child["params.tokenizer.quantizer"] == quantizer and child["tags.dataset"] == "synthetic"
        assert child[[f"metrics.{name}" for name in HEADLINE_METRICS]].notna().all()
        # complete: the same TokenRec / tokenizer / training-curve metrics as the full run, under the same names
        logged = set(mlflow.MlflowClient().get_run(child["run_id"]).data.metrics)
        for name in ("test.seen.tokenrec.NDCG_at_20", "test.unseen.tokenrec.user_only.HR_at_20",
                     "test.seen.lightgcn.NDCG_at_20", "test.seen.lightgcn.NDCG_at_20.p_wilcoxon",
                     "tokenizer.user.collision_rate", "train.llm4rec.loss", "latency.tokenrec.batch_64.ms_per_user"):
            assert name in logged, (quantizer, name)
        assert all(METRIC_NAME_PATTERN.match(name) for name in logged)
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(child["run_id"], "reports")}
        assert {"reports/evaluation_metrics.csv", "reports/headline_metrics.csv"} <= artifacts
        # the baselines come from the full run: same values in every branch
        assert child["metrics.test.seen.lightgcn.NDCG_at_20"] == pytest.approx(
            full["metrics.test.seen.lightgcn.NDCG_at_20"].item())
    # same seed, same CF embeddings, same quantizer: the sweep's mq branch reproduces the full run's tokens
    assert children.loc["mq", "metrics.tokenizer.item.collision_rate"] == pytest.approx(
        full["metrics.tokenizer.item.collision_rate"].item())
    assert children["metrics.tokenizer.item.collision_rate"].nunique() > 1  # the quantizers really differ

    table = pd.read_csv(kedro_project / "data/08_reporting/quantizer_sweep/quantizer_comparison.csv")
    assert list(table["quantizer"]) == list(SWEEP_QUANTIZERS)
    assert table.set_index("quantizer")["tokenrec seen NDCG@20"].to_dict() == pytest.approx(
        children["metrics.test.seen.tokenrec.NDCG_at_20"].to_dict())
    parent_artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"].item(), "reports")}
    assert "reports/quantizer_comparison.csv" in parent_artifacts


def test_sweep_before_any_full_run_says_what_to_run_and_fails_its_mlflow_run(kedro_project):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipeline=quantizer_sweep"], cwd=kedro_project,
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "300"})
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "cf_embeddings" in output and "kedro run --pipeline=full" in output
    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["tokenrec_pipeline"]).iloc[0]
    assert run["status"] == "FAILED" and run["tags.mlflow.runName"].startswith("quantizer_sweep · synthetic")
