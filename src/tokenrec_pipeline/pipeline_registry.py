"""Project pipelines: one modular pipeline per stage, ``full`` = all training stages + evaluation."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from tokenrec_pipeline.pipelines import (
    cf_pretraining,
    evaluation,
    indexing,
    ingestion,
    llm4rec,
    preprocessing,
    prompting,
    recommend,
    tokenization,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "preprocessing": preprocessing.create_pipeline(),
        "cf_pretraining": cf_pretraining.create_pipeline(),
        "tokenization": tokenization.create_pipeline(),
        "prompting": prompting.create_pipeline(),
        "llm4rec": llm4rec.create_pipeline(),
        "indexing": indexing.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    full = sum(stages.values(), Pipeline([]))
    serving = {"recommend": recommend.create_pipeline(), "add_items": recommend.create_add_items_pipeline()}
    return {**stages, **serving, "full": full, "__default__": full}
