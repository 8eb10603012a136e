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

LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input",
          "06_models", "07_model_output", "08_reporting")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` when it exists; tests using it skip cleanly on a user's machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (real-data tests only run where it is)")
    return SHARED_DATA


@pytest.fixture
def kedro_project(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the project's conf + pyproject in ``tmp_path`` with empty data layers.

    Runs there write their artefacts and their MLflow store (``sqlite:///mlflow.db`` is relative
    to the working directory) into ``tmp_path``, never into the real project.
    """
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir(parents=True)
    (tmp_path / "src").mkdir()  # bootstrap_project checks it exists; the package is installed
    for layer in LAYERS:
        (tmp_path / "data" / layer).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
