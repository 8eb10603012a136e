"""`kedro run --pipeline=full` on the tiny configuration with LLM4Rec trained by 2 DDP processes (gloo, CPU)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TINY, run_kedro_cli, tree_digest


def _distributed_tiny() -> dict:
    params = copy.deepcopy(TINY)
    params["llm4rec"]["training"]["epochs"] = 2
    params["llm4rec"]["distributed"] = {"enabled": True, "nproc_per_node": 2}
    return params


@pytest.mark.slow
def test_distributed_full_run_then_a_failing_worker_leaves_the_model_intact(tiny_full_copy, tiny_full_run):
    # The in-process full run's artefacts up to the prompts; from LLM4Rec on, `full` reruns with 2 DDP processes
    # (training, index, evaluation, reporting, the logged model): the stages DDP changes, not the ones before.
    kedro_project = tiny_full_copy
    (kedro_project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(_distributed_tiny()))
    run_kedro_cli(kedro_project, "--pipelines=full", "--from-nodes=llm4rec.train_llm4rec_model")

    table = pd.read_csv(kedro_project / "data/08_reporting/evaluation_metrics.csv")
    in_process = pd.read_csv(tiny_full_run / "data/08_reporting/evaluation_metrics.csv")
    keys = ["model", "split", "user_group", "metric"]
    assert sorted(map(tuple, table[keys].to_numpy())) == sorted(map(tuple, in_process[keys].to_numpy()))
    test = table[table["split"] == "test"]
    assert set(test["metric"]) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (10, 20, 30)}
    assert test["value"].between(0, 1).all()
    history = pd.read_csv(kedro_project / "data/08_reporting/llm4rec_training_history.csv")
    # epoch 0: validation before training (llm4rec.training.validate_before_training); then samples_per_epoch, globally
    assert history["epoch"].tolist() == [0, 1, 2] and history["samples"].tolist() == [0, 32, 32]

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tokenrec_pipeline"], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2  # the copied full run and this one: rank 0 logged into the kedro run, no run of its own
    run = runs.iloc[0]
    assert run["params.llm4rec.distributed.enabled"] == "True"
    loss_curve = mlflow.MlflowClient().get_metric_history(run["run_id"], "train.llm4rec.loss")
    assert [m.step for m in loss_curve] == [1, 2]  # logged once per epoch by rank 0, not again by the node
    np.testing.assert_allclose([m.value for m in loss_curve], history["loss"].dropna(), rtol=1e-6)

    # A corrupt validation row that only rank 1 reads: the llm4rec run fails with rank 1's error and the
    # catalog's model is the one from the successful run, byte for byte.
    model_folder = kedro_project / "data/06_models/llm4rec"
    digest = tree_digest(model_folder)
    valid_path = kedro_project / "data/05_model_input/prompts/valid_prompts.parquet"
    valid = pd.read_parquet(valid_path)
    histories = list(valid["history"])
    histories[1] = np.array([-1])
    valid["history"] = histories
    valid.to_parquet(valid_path, index=False)
    # A hand-edited artefact is refused by the artefact manifest before any node runs (tested in
    # tests/test_artefact_manifest.py); without records nothing is judged, so the worker's own failure is reached.
    (kedro_project / "data/artefact_manifest.json").unlink()
    result = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipelines=llm4rec"], cwd=kedro_project,
                            capture_output=True, text=True, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "failed on rank 1: ValueError: history item ids must be >= 0" in output
    assert tree_digest(model_folder) == digest
