"""Shared fixtures: a throw-away copy of the Kedro project and the optional real data folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# A tiny synthetic configuration of `kedro run --pipeline=full` (real MiniLM backbone): about a minute.
TINY = {
    "ingestion": {"synthetic": {"n_users": 120, "n_items": 60, "n_groups": 4, "mean_history": 12.0}},
    "cf_pretraining": {"lightgcn": {"epochs": 4, "patience": 2}},
    "baselines": {"mf": {"epochs": 4, "patience": 2},
                  "sasrec": {"epochs": 2, "patience": 1, "hidden_size": 16, "max_length": 10},
                  "bert4rec": {"epochs": 2, "patience": 1, "hidden_size": 16, "max_length": 10}},
    "tokenizer": {"codebook_size": 8, "epochs": 3, "patience": 2, "hidden_dims": [32], "code_dim": 8},
    "prompting": {"max_prefixes_per_user": 1, "history_length": 5},
    "llm4rec": {"model": {"max_length": 48},
                "training": {"epochs": 1, "batch_size": 16, "samples_per_epoch": 32, "samples_per_user": None,
                             "num_threads": 1}},
    "autoregressive": {"training": {"epochs": 1, "batch_size": 16, "samples_per_epoch": 32, "num_threads": 1},
                       "validation": {"max_users": 16}},
    "evaluation": {"latency_users": 16, "latency_single_users": 2},
}


LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input",
          "06_models", "07_model_output", "08_reporting")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` when it exists; tests using it skip cleanly on a user's machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (real-data tests only run where it is)")
    return SHARED_DATA


def _make_project(path: Path) -> Path:
    shutil.copy(PROJECT_ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf" / "base", path / "conf" / "base")
    (path / "conf" / "local").mkdir(parents=True)
    (path / "src").mkdir()  # bootstrap_project checks it exists; the package is installed
    for layer in LAYERS:
        (path / "data" / layer).mkdir(parents=True)
    return path


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the project's conf + pyproject in ``tmp_path`` with empty data layers.

    Runs there write their artefacts and their MLflow store (``sqlite:///mlflow.db`` is relative
    to the working directory) into ``tmp_path``, never into the real project.
    """
    monkeypatch.chdir(_make_project(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_full_run(tmp_path_factory) -> Path:
    """A throw-away project after one ``kedro run --pipeline=full`` on :data:`TINY`, shared by the tests
    of one session (one full run instead of one per test). Read it only; change a copy
    (:func:`tiny_full_copy`)."""
    path = _make_project(tmp_path_factory.mktemp("tiny_full_run"))
    run_kedro(path, ["full"], TINY)
    return path


@pytest.fixture
def tiny_full_copy(tiny_full_run: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of :func:`tiny_full_run` (artefacts and MLflow store) that a test may change."""
    target = tmp_path / "project"
    shutil.copytree(tiny_full_run, target)
    monkeypatch.chdir(target)
    return target


def run_kedro(project_path: Path, pipelines: list[str], params: dict | None = None) -> None:
    """``kedro run --pipelines=...`` in a separate process, as a user runs it.

    ``params`` are written to ``conf/local/parameters.yml`` (deep-merged over base). A process per
    run gives every run its own MLflow run, as on the command line.
    """
    import yaml

    (project_path / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(params or {}))
    run_kedro_cli(project_path, f"--pipelines={','.join(pipelines)}")


def run_kedro_cli(project_path: Path, *args: str) -> None:
    """``kedro run ARGS`` in a separate process (one MLflow run each); fails with its output."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "kedro", "run", *args], cwd=project_path,
                            capture_output=True, text=True, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def tree_digest(folder: Path) -> str:
    """SHA-256 over the names and bytes of every file below ``folder`` (to prove a model folder unchanged)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()
