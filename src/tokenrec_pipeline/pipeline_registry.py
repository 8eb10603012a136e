"""Project pipelines: one modular pipeline per stage, ``full`` = all training stages + evaluation."""

from __future__ import annotations

from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline import pipeline_ml_factory

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
    sequential_baselines,
    reporting,
    tokenization,
)


MLFLOW_MODEL_NAME = "tokenrec_recommender"


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "preprocessing": preprocessing.create_pipeline(),
        "cf_pretraining": cf_pretraining.create_pipeline(),
        "sequential_baselines": sequential_baselines.create_pipeline(),  # also part of cf_pretraining
        "tokenization": tokenization.create_pipeline(),
        "prompting": prompting.create_pipeline(),
        "llm4rec": llm4rec.create_pipeline(),
        "indexing": indexing.create_pipeline(),
        "autoregressive": autoregressive.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "reporting": reporting.create_pipeline(),
    }
    training = sum(stages.values(), Pipeline([])) + recommend.create_example_requests_pipeline()
    # Training bound to inference (kedro-mlflow): every `kedro run --pipeline=full` logs the recommend
    # path (requests -> prompts -> LLM4Rec -> faiss top-K) with its artefacts as one MLflow pyfunc model.
    full = pipeline_ml_factory(
        training=training,
        inference=recommend.create_inference_pipeline(),
        input_name="recommendation_requests",
        log_model_kwargs={"name": MLFLOW_MODEL_NAME},
    )
    serving = {"recommend": recommend.create_pipeline(), "add_items": recommend.create_add_items_pipeline()}
    return {**stages, **serving, "full": full, "__default__": full}
