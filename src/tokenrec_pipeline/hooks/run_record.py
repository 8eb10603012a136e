"""Hooks that complete the MLflow record kedro-mlflow opens for every ``kedro run``.

kedro-mlflow opens one run per ``kedro run`` and logs the parameters and the catalog's MLflow datasets into it.
:class:`RunRecordHooks` adds what the MLflow UI needs to tell runs apart and compare them:

- a run name that says what differs, ``<pipeline> · <dataset> · <quantizer> · <recipe>``
  (``full · synthetic · mq · default``), and the tags ``dataset``, ``quantizer``, ``recipe``, ``backbone``,
  ``split_strategy`` (plus ``git_commit``, ``git_dirty``, ``kedro_pipeline``, and ``best_baseline`` once the
  evaluation has run), on every run;
- in ``kedro run --pipeline=quantizer_sweep``, one child run per quantizer (``quantizer_sweep.<q>`` namespace):
  each node of a branch runs with its child run active, so the branch's MLflow datasets, the parameters its
  nodes read and the tags land there, under the same names as in a ``full`` run.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import DatasetNotFoundError
from kedro_mlflow.framework.hooks.utils import _flatten_dict
from mlflow.entities import RunStatus
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

logger = logging.getLogger(__name__)

SWEEP_NAMESPACE = "quantizer_sweep"

TAG_PARAMETERS = {
    "dataset": "dataset",
    "quantizer": "tokenizer.quantizer",
    "recipe": "llm4rec.recipe",
    "backbone": "llm4rec.model.backbone",
    "split_strategy": "preprocessing.split_strategy",
}
"""Run tag -> the parameter it shows (``params:<name>``)."""

RUN_NAME_PARTS = ("dataset", "quantizer", "recipe")
"""Tags that follow the pipeline name in the run name."""


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


def pipeline_label(run_params: dict) -> str:
    """The pipeline part of the run name: ``full`` for ``kedro run`` without ``--pipeline`` (``__default__``
    is ``full``), ``a+b`` for ``--pipelines=a,b``."""
    names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or ["__default__"]
    names = [names] if isinstance(names, str) else list(names)
    return "+".join("full" if name == "__default__" else name for name in names)


def run_name(pipeline: str, tags: dict[str, str]) -> str:
    """``<pipeline> · <dataset> · <quantizer> · <recipe>`` from the run's tags (missing parts left out)."""
    return " · ".join([pipeline, *(tags[part] for part in RUN_NAME_PARTS if tags.get(part))])


def sweep_quantizer(namespace: str | None) -> str | None:
    """The quantizer of a node in a ``quantizer_sweep.<quantizer>[...]`` namespace, else ``None``."""
    parts = (namespace or "").split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == SWEEP_NAMESPACE else None


def _load_parameter(catalog, name: str) -> Any:
    try:
        return catalog.load(f"params:{name}")
    except DatasetNotFoundError:  # an optional parameter (or a conf/ without it): the tag is left out
        return None


class RunRecordHooks:
    """Name and tag the MLflow run kedro-mlflow opened; one child run per quantizer in the quantizer sweep."""

    def __init__(self) -> None:
        self._tags: dict[str, str] = {}
        self._pipeline = "full"
        self._children: dict[str, str] = {}      # quantizer -> child run id
        self._child_params: dict[str, set[str]] = {}
        self._pending: set[str] = set()           # outputs of the running sweep node not saved yet
        self._child_active = False

    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        project_path = Path(run_params.get("project_path") or Path.cwd())
        # CPU threads for torch (null: torch's default). On a shared or small machine one thread per
        # process avoids oversubscription, which slows sparse ops and small matmuls 10x and more.
        threads = _load_parameter(catalog, "torch_num_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
            logger.info("torch uses %d CPU thread(s) (params:torch_num_threads)", int(threads))
        self._pipeline = pipeline_label(run_params)
        self._tags = {**_git_state(project_path), "kedro_pipeline": self._pipeline}
        for tag, parameter in TAG_PARAMETERS.items():
            value = _load_parameter(catalog, parameter)
            if value is not None:
                self._tags[tag] = str(value)
        order = ("mq", "rqvae", "vqvae", "kmeans")
        quantizers = sorted({q for node in pipeline.nodes if (q := sweep_quantizer(node.namespace))},
                            key=lambda q: (order.index(q) if q in order else len(order), q))
        if quantizers:  # the sweep's parent run: its quantizers, one child run each
            self._tags["quantizer"] = "+".join(quantizers)
        self._children, self._child_params, self._pending, self._child_active = {}, {}, set(), False
        # trylast: kedro-mlflow's own before_pipeline_run has opened the run (none: tracking is off for it).
        if mlflow.active_run() is not None:
            name = run_name(self._pipeline, self._tags)
            mlflow.set_tags({**self._tags, "mlflow.runName": name})
            logger.info("MLflow run %r (%s)", name, mlflow.active_run().info.run_id)
        reused = sorted(name for name in pipeline.inputs() if not name.startswith("params:")) if quantizers else []
        missing = [name for name in reused if not catalog.exists(name)]
        if missing:
            if mlflow.active_run() is not None:  # no node will run: close the run kedro-mlflow opened
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise FileNotFoundError(
                f"{SWEEP_NAMESPACE} reuses the artefacts of a full run, and {missing} are not there: run "
                "`kedro run --pipeline=full` first (same --params/--env as the sweep), then the sweep.")

    @hook_impl(trylast=True)
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        # trylast: after kedro-mlflow's before_node_run, which reactivates the parent run and logs the node's
        # parameters there; a sweep node then runs with its quantizer's child run on top.
        quantizer = sweep_quantizer(node.namespace)
        if quantizer is None or mlflow.active_run() is None:
            return
        tags = {**self._tags, "quantizer": quantizer}
        if quantizer not in self._children:
            parent = mlflow.active_run().info.run_id
            # the parent's process tags (tokenrec.pid / tokenrec.host: MlflowRunStatusHooks) mark the child too
            inherited = {k: v for k, v in mlflow.MlflowClient().get_run(parent).data.tags.items()
                         if k.startswith("tokenrec.")}
            child = mlflow.start_run(run_name=run_name(self._pipeline, tags), nested=True,
                                     tags={**inherited, **tags})
            self._children[quantizer] = child.info.run_id
            self._child_params[quantizer] = set()
        else:
            mlflow.start_run(run_id=self._children[quantizer], nested=True)
        self._child_active = True
        self._log_child_params(quantizer, inputs)
        self._pending = set(node.outputs)
        if not self._pending:
            self._end_child()

    def _log_child_params(self, quantizer: str, inputs: dict) -> None:
        """The node's parameters under their global names, as kedro-mlflow logs them into a full run (the branch's
        ``quantizer_sweep.<q>.tokenizer.quantizer`` as ``tokenizer.quantizer``)."""
        own = f"{SWEEP_NAMESPACE}.{quantizer}."
        params = {name[len("params:"):].removeprefix(own): value
                  for name, value in inputs.items() if name.startswith("params:")}
        flat = _flatten_dict(params, recursive=True, sep=".")
        flat["tokenizer.quantizer"] = quantizer
        logged = self._child_params[quantizer]
        for name, value in flat.items():
            if name in logged:
                continue
            logged.add(name)
            if len(str(value)) <= MAX_PARAM_VAL_LENGTH:
                mlflow.log_param(name, value)
            else:  # kedro-mlflow's long_params_strategy "tag" (conf/base/mlflow.yml)
                mlflow.set_tag(name, value)

    def _end_child(self, status: str = "FINISHED") -> None:
        if self._child_active:
            mlflow.end_run(status)
            self._child_active = False

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if dataset_name.endswith("headline_metrics") and mlflow.active_run() is not None and len(data):
            row = data.iloc[0]
            mlflow.set_tag("best_baseline", row.get("best_baseline") or "none")
            mlflow.set_tag("mlflow.note.content", (
                f"**{row['quantizer']}**: TokenRec test HR@20 {row['tokenrec seen HR@20']:.4f} seen / "
                f"{row['tokenrec unseen HR@20']:.4f} unseen, NDCG@20 {row['tokenrec seen NDCG@20']:.4f} / "
                f"{row['tokenrec unseen NDCG@20']:.4f}; best baseline {row.get('best_baseline') or '-'} "
                f"NDCG@20 {row['best_baseline seen NDCG@20']:.4f} seen; collisions item "
                f"{100 * row['item collision rate']:.1f}% / user {100 * row['user collision rate']:.1f}%."))
        if self._child_active and sweep_quantizer(node.namespace) is not None:
            self._pending.discard(dataset_name)
            if not self._pending:  # the node's last output is in its child run
                self._end_child()

    @hook_impl
    def on_node_error(self, error, node, catalog, inputs, is_async, run_id) -> None:
        self._end_child(RunStatus.to_string(RunStatus.FAILED))

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._end_child()  # tryfirst: before kedro-mlflow ends the parent run
