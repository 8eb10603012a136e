"""Binding of the training pipeline to the recommend inference pipeline as one MLflow model.

kedro-mlflow's :class:`~kedro_mlflow.pipeline.pipeline_ml.PipelineML` logs the inference pipeline with the
artefacts it reads when the run ends. Its filtered slices (``kedro run --namespaces=...``,
``--from-nodes``, one Airflow task per stage) stay ``PipelineML`` objects and refuse to exist when the
slice neither produces nor reads every artefact the inference pipeline needs -- which would make every
partial run fail. Here such a slice simply runs as a plain pipeline (no model is logged, since the
slice cannot vouch for a consistent set of artefacts); a slice that does have all of them still logs it.
"""

from __future__ import annotations

import logging

from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline.pipeline_ml import KedroMlflowPipelineMLError, PipelineML

logger = logging.getLogger(__name__)


class TrainingPipelineML(PipelineML):
    """``PipelineML`` whose partial slices fall back to plain pipelines instead of raising."""

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
