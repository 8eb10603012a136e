"""`kedro run` as a careless user or a crash leaves things: stale artefact sets, a failed k-core, killed runs."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.conftest import TINY, run_kedro, run_kedro_cli

DATA_TINY = {"ingestion": {"synthetic": {"n_users": 120, "n_items": 80, "n_groups": 4}}}


def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedro", "run", *args], check=False, cwd=project, capture_output=True,
                          text=True,
                          env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "4000"})


def _output(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())  # rich wraps long lines


def _runs(project: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    if not (project / "mlflow.db").exists():
        return pd.DataFrame()
    return mlflow.search_runs(search_all_experiments=True)


@pytest.mark.slow
def test_recommend_refuses_the_artefacts_of_a_run_that_stopped_before_llm4rec(tiny_full_copy):
    project = tiny_full_copy
    users = pd.read_parquet(project / "data/03_primary/user_map.parquet")
    seen = users.loc[users["user_group"] == "seen", "original_user"].head(2).tolist()
    recommend = ("--pipelines=recommend", f"--params=recommend.users={' '.join(seen)}")
    run_kedro_cli(project, *recommend)  # the full run's artefacts belong together
    answered = (project / "data/07_model_output/recommendations.csv").read_bytes()

    # A run with other data that stopped after the prompts: new tokenizers/tokens/prompts, the old language model.
    run_kedro_cli(project, "--pipelines=full", "--to-nodes=prompting.build_prompts", "--params=seed=7")
    refused = _kedro(project, *recommend)
    message = _output(refused)
    assert refused.returncode != 0
    assert "The artefacts `kedro run --pipelines=recommend` would read do not belong together" in message
    assert "llm4rec_model (data/06_models/llm4rec) was built by llm4rec.train_llm4rec_model in run" in message
    assert "from inputs that have been rewritten since:" in message and "user.tokenizer" in message
    assert (project / "data/07_model_output/recommendations.csv").read_bytes() == answered  # nothing written

    # The command the message gives makes the set whole again.
    from_nodes = re.search(r"kedro run --pipeline=full --from-nodes=(\S+)", refused.stdout + refused.stderr)
    nodes = from_nodes.group(1) if from_nodes else ""  # COLUMNS=4000: rich does not wrap the line
    assert "llm4rec.train_llm4rec_model" in nodes.split(",")
    run_kedro_cli(project, "--pipelines=full", f"--from-nodes={nodes}", "--params=seed=7")
    users = pd.read_parquet(project / "data/03_primary/user_map.parquet")
    seen = users.loc[users["user_group"] == "seen", "original_user"].head(2).tolist()
    run_kedro_cli(project, "--pipelines=recommend", f"--params=recommend.users={' '.join(seen)}")


@pytest.mark.slow
def test_failed_k_core_says_the_layers_differ_ends_failed_and_later_stages_refuse(kedro_project):
    run_kedro(kedro_project, ["ingestion", "preprocessing"], DATA_TINY)
    failed = _kedro(kedro_project, "--pipelines=ingestion,preprocessing", "--params=preprocessing.k_core=1000,seed=3")
    message = _output(failed)
    assert failed.returncode != 0
    assert "1000-core filtering removed every interaction" in message
    assert "k_core_interactions and everything after it (data/03_primary onwards) still hold the previous run's " \
           "data: the layers now differ" in message
    runs = _runs(kedro_project).sort_values("start_time")
    assert runs["status"].tolist() == ["FINISHED", "FAILED"]

    # a later stage that reads the old 03_primary refuses it: it was built from the old 02_intermediate
    refused = _kedro(kedro_project, "--pipelines=preprocessing", "--from-nodes=preprocessing.split_interactions")
    assert refused.returncode != 0
    assert "k_core_interactions (data/03_primary/k_core_interactions.parquet) was built by " \
           "preprocessing.apply_k_core" in _output(refused)
    assert "--from-nodes=preprocessing.apply_k_core" in _output(refused)


def _running_with_pid(project: Path) -> dict[str, str]:
    """run_id -> status of the runs that carry our pid tag, read with sqlite3 (mlflow's client would migrate the
    database while the run's process is still creating it)."""
    try:
        with sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                   "WHERE t.key = 'tokenrec.pid'").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def _wait_for_running(project: Path, exclude: set[str], timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [run for run, status in _running_with_pid(project).items()
                   if status == "RUNNING" and run not in exclude]
        if running:
            return running[0]
        time.sleep(1.0)
    raise AssertionError("no MLflow run started")


def _wait_for_node_output(project: Path, since: float, timeout: float = 120.0) -> None:
    """Until some node of a run started at ``since`` has written an artefact (the run is past its start-up hooks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(path.is_file() and path.stat().st_mtime > since for path in (project / "data").glob("0*/**/*")):
            return
        time.sleep(0.2)
    raise AssertionError("no node wrote an artefact")


def _status(project: Path, run_id: str, timeout: float = 0.0) -> str:
    deadline = time.monotonic() + timeout
    status = _running_with_pid(project).get(run_id, "")
    while status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _running_with_pid(project).get(run_id, "")
    return status


@pytest.mark.slow
def test_sigkilled_run_is_marked_killed_by_the_next_and_sigint_ends_killed(kedro_project):
    (kedro_project / "conf/local/parameters.yml").write_text(yaml.safe_dump(TINY))
    command = [sys.executable, "-m", "kedro", "run", "--pipelines=full"]
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    first = subprocess.Popen(command, cwd=kedro_project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        killed_run = _wait_for_running(kedro_project, set())
    finally:
        first.kill()
        first.wait(timeout=60)
    assert _status(kedro_project, killed_run) == "RUNNING"  # SIGKILL cannot be caught

    started = time.time()
    second = subprocess.Popen(command, cwd=kedro_project, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        interrupted_run = _wait_for_running(kedro_project, {killed_run})
        assert _status(kedro_project, killed_run, timeout=30) == "KILLED"  # the next run closed the orphan
        _wait_for_node_output(kedro_project, started)  # Ctrl-C while the pipeline's nodes run
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=120) != 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(timeout=60)
    assert _status(kedro_project, interrupted_run) == "KILLED"

    # Later interrupts land in other nodes and MLflow calls; each still ends its run KILLED (none FAILED, FINISHED
    # or left RUNNING: the handler makes no MLflow call, on_pipeline_error and the exit handler end the run).
    seen = {killed_run, interrupted_run}
    for delay in (0.3, 1.5):
        started = time.time()
        third = subprocess.Popen(command, cwd=kedro_project, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            run = _wait_for_running(kedro_project, seen)
            _wait_for_node_output(kedro_project, started)
            time.sleep(delay)
            third.send_signal(signal.SIGINT)
            assert third.wait(timeout=120) != 0
        finally:
            if third.poll() is None:
                third.kill()
                third.wait(timeout=60)
        seen.add(run)
        assert _status(kedro_project, run) == "KILLED", f"SIGINT {delay} s after the run started"
