"""Binding of the training pipeline to the recommend inference pipeline as one MLflow model.

kedro-mlflow's :class:`~kedro_mlflow.pipeline.pipeline_ml.PipelineML` logs the inference pipeline with the
artefacts it reads when the run ends. Its filtered slices (``kedro run --namespaces=...``,
``--from-nodes``, one Airflow task per stage) stay ``PipelineML`` objects and refuse to exist when the
slice neither produces nor reads every artefact the inference pipeline needs -- which would make every
partial run fail. Here such a slice simply runs as a plain pipeline (no model is logged, since the
slice cannot vouch for a consistent set of artefacts); a slice that does have all of them still logs it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np
from kedro.framework.hooks import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from kedro_mlflow.mlflow import KedroPipelineModel
from kedro_mlflow.pipeline.pipeline_ml import KedroMlflowPipelineMLError, PipelineML

from tokenrec_pipeline.serving.recommend import ON_UNKNOWN_ITEM

logger = logging.getLogger(__name__)


class TrainingPipelineML(PipelineML):
    """``PipelineML`` whose partial slices fall back to plain pipelines instead of raising.

    Overrides kedro-mlflow's private ``PipelineML._turn_pipeline_to_ml`` (every slicing method ends in it);
    tests/pipelines/test_served_model.py fails if a kedro-mlflow release stops calling it.
    """

    def _turn_pipeline_to_ml(self, pipeline: Pipeline) -> Pipeline:
        try:
            return TrainingPipelineML(
                nodes=pipeline.nodes,
                inference=self.inference,
                input_name=self.input_name,
                kpm_kwargs=self.kpm_kwargs,
                log_model_kwargs=self.log_model_kwargs,
            )
        except KedroMlflowPipelineMLError:
            logger.info("Partial run of the training pipeline: the MLflow model is logged only by runs that "
                        "produce or read every artefact of the recommend pipeline.")
            return Pipeline(pipeline.nodes)


def bind_training_to_inference(training: Pipeline, inference: Pipeline, input_name: str,
                               model_name: str) -> TrainingPipelineML:
    """``pipeline_ml_factory`` with partial-run tolerance: ``training`` logs ``inference`` (reading
    ``input_name``) as the MLflow model ``model_name`` of the run."""
    return TrainingPipelineML(nodes=training.nodes, inference=inference, input_name=input_name,
                              log_model_kwargs={"name": model_name})


# ----------------------------------------------------------------------------------------------------------
# The served model: only the request parameters a user may set, one private catalog per request
# ----------------------------------------------------------------------------------------------------------

REQUEST_PARAMETERS = ("recommend.top_k", "recommend.on_unknown_item")
"""The only per-request ``params`` the packaged model accepts (anything else is refused with a 400)."""
MAX_TOP_K = 1000
"""Largest ``recommend.top_k`` a request may ask for (it is also clipped to the catalogue)."""


class _SharedDataset(MemoryDataset):
    """A loaded artefact shared by every request: handed out as is, never released by the runner."""

    def __init__(self, data: Any) -> None:
        super().__init__(data=data, copy_mode="assign")

    def _release(self) -> None:
        pass


def check_request_params(params: dict[str, Any] | None, fixed: dict[str, Any] | None = None,
                         max_top_k: int = MAX_TOP_K) -> dict[str, Any]:
    """The request parameters to apply, validated, or an ``MlflowException`` (HTTP 400) naming the parameter.

    Why: kedro-mlflow's model would import and call whatever a ``runner`` param names, and write any param
    into its catalog. Only ``recommend.top_k`` (an integer in ``[1, max_top_k]``) and
    ``recommend.on_unknown_item`` (``error`` | ``skip``) may be set. MLflow passes every parameter of the
    logged signature with its logged value; those (``fixed``: name -> logged value) are accepted only
    unchanged, and dropped.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    fixed = fixed or {}
    params = dict(params or {})
    changed = sorted(name for name in set(params) - set(REQUEST_PARAMETERS)
                     if name not in fixed or not _same(params[name], fixed[name]))
    if changed:
        raise MlflowException(f"Request parameter(s) {changed} cannot be set: this model accepts only "
                              f"{list(REQUEST_PARAMETERS)}.", INVALID_PARAMETER_VALUE)
    params = {name: value for name, value in params.items() if name in REQUEST_PARAMETERS}
    if "recommend.top_k" in params:
        value = params["recommend.top_k"]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= max_top_k:
            raise MlflowException(f"recommend.top_k must be an integer from 1 to {max_top_k}, got {value!r}.",
                                  INVALID_PARAMETER_VALUE)
        params["recommend.top_k"] = int(value)
    if "recommend.on_unknown_item" in params and params["recommend.on_unknown_item"] not in ON_UNKNOWN_ITEM:
        raise MlflowException(f"recommend.on_unknown_item must be one of {list(ON_UNKNOWN_ITEM)}, got "
                              f"{params['recommend.on_unknown_item']!r}.", INVALID_PARAMETER_VALUE)
    return params


def _same(value: Any, logged: Any) -> bool:
    try:
        return bool(value == logged)
    except (ValueError, TypeError):  # e.g. arrays without one truth value
        return False


class TokenRecPipelineModel(KedroPipelineModel):
    """kedro-mlflow's ``KedroPipelineModel`` made safe to serve.

    * Request params: only :data:`REQUEST_PARAMETERS`, validated (:func:`check_request_params`); the runner
      is fixed (a ``runner`` param is refused before anything is imported).
    * Concurrency: each request runs on a catalog of its own (the loaded artefacts shared read-only, its
      params and input private), so concurrent requests never see each other's params -- and the artefacts
      are not deep-copied per request, as the parent class does.
    * Errors the request caused (unknown users or items, wrong columns) come back as ``MlflowException``
      with ``INVALID_PARAMETER_VALUE`` (HTTP 400) and the project's message, without a traceback.
    """

    # No type hints on purpose: MLflow reads predict's hints as an input schema and warns about these.
    def predict(self, context, model_input, params=None):
        """Run the recommend pipeline on ``model_input`` (request table) with validated ``params``."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        fixed = {name.removeprefix("params:"): self.loaded_catalog.load(name)
                 for name in self.loaded_catalog.keys() if name.startswith("params:")}
        params = check_request_params(params, {**fixed, "runner": type(self.runner).__name__})
        catalog = DataCatalog(datasets={name: _SharedDataset(self.loaded_catalog.load(name))
                                        for name in self.loaded_catalog.keys() if name != self.input_name})
        for name, value in params.items():
            catalog[f"params:{name}"] = MemoryDataset(value)
        catalog[self.input_name] = MemoryDataset(model_input, copy_mode="assign")
        try:
            output = SequentialRunner().run(pipeline=self.pipeline, catalog=catalog,
                                            hook_manager=_create_hook_manager())
        except (LookupError, ValueError, TypeError) as error:  # the request's fault: say why, no traceback
            raise MlflowException(f"{type(error).__name__}: {error}", INVALID_PARAMETER_VALUE) from None
        return output[self.output_name].load()


# kedro-mlflow's hook builds the logged model from its own KedroPipelineModel; it must build ours. Tested in
# tests/pipelines/test_served_model.py (the hook's name and the logged model's class): the tests fail if a
# kedro-mlflow release stops reading the name from this module attribute (kedro-mlflow is pinned to the tested
# minor version in pyproject.toml).
# (importlib: the package attribute of that name is the hook instance, which shadows the module.)
importlib.import_module("kedro_mlflow.framework.hooks.mlflow_hook").KedroPipelineModel = TokenRecPipelineModel
