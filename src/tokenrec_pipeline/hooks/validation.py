"""Hooks that stop a run before it does harm and leave an honest record when it stops.

* :class:`ParameterValidationHooks` -- every parameter checked against ``conf/base`` (unknown keys, types,
  ranges) before kedro-mlflow opens a run and before the first node.
* :class:`ArtefactManifestHooks` -- records what each saved artefact was built from
  (:mod:`tokenrec_pipeline.io.artefact_manifest`), refuses a run whose input artefacts do not belong together
  (``recommend`` after a ``full`` run killed during ``llm4rec``), and refuses to log the MLflow model from
  such a set.
* :class:`MlflowRunStatusHooks` -- SIGINT/SIGTERM end the MLflow run as KILLED (not FINISHED, not RUNNING
  forever), and runs left RUNNING by a killed process on this machine are marked KILLED by the next run.
  A failing pipeline ends as FAILED through kedro-mlflow's ``on_pipeline_error``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline
from mlflow.entities import RunStatus

from tokenrec_pipeline.hooks.params_validation import (
    load_base_parameters,
    validate_parameters,
)
from tokenrec_pipeline.io.artefact_manifest import (
    ArtefactManifest,
    StaleArtefactsError,
    dataset_path,
)

logger = logging.getLogger(__name__)


def _project_path(run_params: dict) -> Path:
    return Path(run_params.get("project_path") or Path.cwd())


def _full_pipeline_nodes() -> set[str] | None:
    """Node names of ``full``, the pipeline the rebuild command runs (None outside a configured project)."""
    from kedro.framework.project import pipelines

    try:
        return {node.name for node in pipelines["full"].nodes}
    except KeyError:
        return None


class ParameterValidationHooks:
    """Refuse unknown, mistyped or out-of-range parameters before anything runs."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline: Pipeline, catalog) -> None:
        from kedro.framework.project import settings

        conf_base = _project_path(run_params) / settings.CONF_SOURCE / "base"
        validate_parameters(catalog.load("parameters"), load_base_parameters(conf_base), source=str(conf_base))


class ArtefactManifestHooks:
    """Record each artefact's lineage as it is saved; refuse inputs that do not belong together."""

    def __init__(self) -> None:
        self._catalog: Any = None
        self._manifest: ArtefactManifest | None = None
        self._run_id = ""
        self._memory_lineage: dict[str, dict[str, str]] = {}
        self._pending: dict[str, dict[str, Any]] = {}

    def _path(self, name: str) -> Path | None:
        if name.startswith("params:") or name == "parameters":
            return None
        dataset = self._catalog.get(name)  # None for a name the catalog cannot resolve
        return dataset_path(dataset) if dataset is not None else None

    def _artefact_keys(self, names) -> list[str]:
        assert self._manifest is not None
        return [self._manifest.key(path) for name in names if (path := self._path(name)) is not None]

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline: Pipeline, catalog) -> None:
        self._catalog = catalog
        self._run_id = str(run_params.get("run_id") or run_params.get("session_id") or "")
        self._manifest = ArtefactManifest(_project_path(run_params))
        self._memory_lineage, self._pending = {}, {}
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        reader = f"`kedro run --pipelines={','.join(names)}`"
        self._manifest.check(self._artefact_keys(sorted(pipeline.inputs())), reader, _full_pipeline_nodes())

    @hook_impl
    def before_node_run(self, node, catalog, inputs: dict, is_async: bool, run_id: str) -> None:
        if self._manifest is None:
            return
        records = self._manifest.records()
        lineage: dict[str, str] = {}
        for name in node.inputs:
            path = self._path(name)
            if path is None:
                lineage.update(self._memory_lineage.get(name, {}))
                continue
            key = self._manifest.key(path)
            sha = self._manifest.current_sha256(key, records.get(key))
            if sha is not None:
                lineage[key] = sha
        outputs = {name: path for name in node.outputs if (path := self._path(name)) is not None}
        self._pending[node.name] = {"inputs": lineage, "left": set(outputs), "saved": {}}

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        pending = self._pending.get(node.name) if node is not None else None
        if pending is None or self._manifest is None:
            return
        path = self._path(dataset_name)
        if path is None:
            self._memory_lineage[dataset_name] = pending["inputs"]
            return
        pending["saved"][self._manifest.key(path)] = (dataset_name, path)
        pending["left"].discard(dataset_name)
        if not pending["left"]:  # all of the node's artefacts are saved: record them together
            active = mlflow.active_run()
            run = f"{self._run_id} (MLflow run {active.info.run_id})" if active else self._run_id
            self._manifest.record_node(node.name, run, pending["inputs"], pending["saved"])
            del self._pending[node.name]

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, run_params: dict, run_result, pipeline: Pipeline, catalog) -> None:
        """Before kedro-mlflow logs the MLflow model: its artefacts must belong together."""
        inference = getattr(pipeline, "inference", None)
        if inference is None or self._manifest is None:
            return
        names = sorted(inference.inputs() - {getattr(pipeline, "input_name", None)})
        try:
            self._manifest.check(self._artefact_keys(names), "the MLflow model", _full_pipeline_nodes())
        except StaleArtefactsError:
            _end_mlflow_runs(RunStatus.FAILED)
            raise


def _end_mlflow_runs(status: int) -> None:
    """End every active MLflow run of this thread with ``status`` (innermost first)."""
    while (run := mlflow.active_run()) is not None:
        mlflow.end_run(RunStatus.to_string(status))
        logger.warning("MLflow run %s ended as %s.", run.info.run_id, RunStatus.to_string(status))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MlflowRunStatusHooks:
    """KILLED for runs stopped by SIGINT/SIGTERM, or found RUNNING after their process died."""

    PID_TAG, HOST_TAG = "tokenrec.pid", "tokenrec.host"
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._run_id: str | None = None
        self._signalled: int | None = None
        self._exit_handler_registered = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline: Pipeline, catalog) -> None:
        # kedro-mlflow's before_pipeline_run (a plugin hook, called before the project's) opened the run.
        # The handlers go in first: a signal that arrives while the run is being tagged or orphans are closed
        # (an MLflow query) must already end this run KILLED.
        self._signalled = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        if not self._exit_handler_registered:
            # After kedro-mlflow started the run, so this runs before MLflow's own exit handler (which would end
            # a still-active run FINISHED).
            atexit.register(self._end_killed_run)
            self._exit_handler_registered = True
        run = mlflow.active_run()
        self._run_id = run.info.run_id if run is not None else None
        if run is not None:
            mlflow.set_tags({self.PID_TAG: str(os.getpid()), self.HOST_TAG: socket.gethostname()})
            self._close_orphans(run.info.experiment_id, run.info.run_id)

    def _close_orphans(self, experiment_id: str, own_run_id: str) -> None:
        """Runs of this machine still RUNNING although their process is gone (SIGKILL, power loss) -> KILLED."""
        client = mlflow.MlflowClient()
        for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'"):
            tags = run.data.tags
            pid = tags.get(self.PID_TAG, "")
            if (run.info.run_id != own_run_id and tags.get(self.HOST_TAG) == socket.gethostname()
                    and pid.isdigit() and not _alive(int(pid))):
                client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
                logger.warning("MLflow run %s was left RUNNING by process %s, which is gone: marked KILLED.",
                               run.info.run_id, pid)

    def _on_signal(self, signum: int, frame) -> None:
        # No MLflow call here: the signal may have interrupted one (a tracking-store transaction). The run is ended
        # KILLED where the interrupt lands: on_pipeline_error, or at exit (_end_killed_run).
        self._signalled = signum
        self._restore()
        self._raise_for_signal()

    def _raise_for_signal(self) -> None:
        """KeyboardInterrupt for SIGINT, SystemExit(128 + n) for SIGTERM, once a signal was received."""
        if self._signalled == signal.SIGINT:
            raise KeyboardInterrupt
        if self._signalled is not None:
            raise SystemExit(128 + self._signalled)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async, run_id) -> None:
        # The handler's exception can be swallowed where it lands (Python ignores exceptions raised in __del__ and
        # other finalizers, which the handler can interrupt): the next node boundary stops the run instead.
        self._raise_for_signal()

    def _end_killed_run(self) -> None:
        """At exit after a signal: end this process's MLflow run(s) as KILLED (whatever ended them before)."""
        if self._signalled is None:
            return
        try:
            _end_mlflow_runs(RunStatus.KILLED)
            if self._run_id is not None:
                mlflow.MlflowClient().set_terminated(self._run_id, RunStatus.to_string(RunStatus.KILLED))
        except Exception:  # at exit: report, never raise
            logger.warning("Could not mark MLflow run %s KILLED.", self._run_id, exc_info=True)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        self._previous = {}

    @hook_impl
    def after_pipeline_run(self, run_params: dict, run_result, pipeline: Pipeline, catalog) -> None:
        self._restore()
        self._raise_for_signal()  # a signal swallowed during the last node: still a stopped run, not a finished one

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict, pipeline: Pipeline, catalog) -> None:
        self._restore()
        # kedro-mlflow's on_pipeline_error (a plugin hook, called before this one) has just marked the run FAILED;
        # a run stopped by a signal was killed, not failed (the interrupt can surface as another exception when it
        # cuts a library call short).
        if self._signalled is not None and self._run_id is not None:
            mlflow.MlflowClient().set_terminated(self._run_id, RunStatus.to_string(RunStatus.KILLED))
            logger.warning("MLflow run %s ended as KILLED (signal %d).", self._run_id, self._signalled)
