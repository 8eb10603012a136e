"""Project pipelines: one modular pipeline per stage, ``full`` = all training stages + evaluation."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from tokenrec_pipeline.mlflow_model import bind_training_to_inference
from tokenrec_pipeline.pipelines import (
    autoregressive,
    cf_pretraining,
    evaluation,
    indexing,
    ingestion,
    llm4rec,
    preprocessing,
    prompting,
    recommend,
    reporting,
    sequential_baselines,
    tokenization,
)

MLFLOW_MODEL_NAME = "tokenrec_recommender"


def _as_stage(name: str, pipeline: Pipeline) -> Pipeline:
    """The stage's nodes under the namespace ``name``, dataset and parameter names unchanged.

    The namespace groups a stage into one collapsible block in ``kedro viz`` and one task in the
    Airflow DAG (``kedro airflow create --group-by namespace``): one task per stage, the GPU stage
    (``llm4rec``) on its own.
    """
    return Pipeline(pipeline, namespace=name, prefix_datasets_with_namespace=False)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    stages = {
        name: _as_stage(name, create())
        for name, create in {
            "ingestion": ingestion.create_pipeline,
            "preprocessing": preprocessing.create_pipeline,
            "cf_pretraining": cf_pretraining.create_pipeline,  # includes the sequential baselines' training
            "tokenization": tokenization.create_pipeline,
            "prompting": prompting.create_pipeline,
            "llm4rec": llm4rec.create_pipeline,
            "indexing": indexing.create_pipeline,
            "autoregressive": autoregressive.create_pipeline,
            "evaluation": evaluation.create_pipeline,
            "reporting": reporting.create_pipeline,
        }.items()
    }
    training = sum(stages.values(), Pipeline([])) + _as_stage(
        "recommend", recommend.create_example_requests_pipeline())
    # Training bound to inference (kedro-mlflow's PipelineML): every `kedro run --pipeline=full` logs the
    # recommend path (requests -> prompts -> LLM4Rec -> faiss top-K) with its artefacts as one MLflow model.
    full = bind_training_to_inference(training, recommend.create_inference_pipeline(), "recommendation_requests",
                                      MLFLOW_MODEL_NAME)
    extra = {
        # the part of cf_pretraining that trains SASRec / BERT4Rec, runnable alone (same nodes, same namespace)
        "sequential_baselines": _as_stage("cf_pretraining", sequential_baselines.create_pipeline()),
        "recommend": _as_stage("recommend", recommend.create_pipeline()),
        "add_items": _as_stage("add_items", recommend.create_add_items_pipeline()),
    }
    return {**stages, **extra, "full": full, "__default__": full}
