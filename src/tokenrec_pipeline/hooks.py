"""Hooks that complete the MLflow record kedro-mlflow opens for every ``kedro run``."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import mlflow
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


def _git_state(project_path: Path) -> dict[str, str]:
    """The commit and whether the work tree had uncommitted changes (empty outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_path,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


class RunRecordHooks:
    """Tag the active MLflow run with the git commit, the dataset and the pipeline name."""

    def __init__(self) -> None:
        self._tags: dict[str, str] = {}
        self._tagged = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        project_path = Path(run_params.get("project_path") or Path.cwd())
        self._tags = _git_state(project_path)
        # CPU threads for torch (null: torch's default). On a shared or small machine one thread per
        # process avoids oversubscription, which slows sparse ops and small matmuls 10x and more.
        try:
            threads = catalog.load("params:torch_num_threads")
        except Exception:  # the parameter is optional
            threads = None
        if threads:
            import torch

            torch.set_num_threads(int(threads))
            logger.info("torch uses %d CPU thread(s) (params:torch_num_threads)", int(threads))
        self._tags["kedro_pipeline"] = str(run_params.get("pipeline_names") or run_params.get("pipeline_name") or "__default__")
        self._tagged = False

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        # kedro-mlflow opens the run in its own before_pipeline_run; by the first node it exists.
        if not self._tagged and mlflow.active_run() is not None:
            dataset = inputs.get("params:dataset")
            if dataset is not None:
                self._tags["dataset"] = str(dataset)
            mlflow.set_tags(self._tags)
            self._tagged = True
