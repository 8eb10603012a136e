"""Project pipelines: one modular pipeline per stage, ``full`` = all training stages + evaluation."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from tokenrec_pipeline.core.baselines import baseline_table_models
from tokenrec_pipeline.io.mlflow_model import bind_training_to_inference
from tokenrec_pipeline.pipelines import (
    autoregressive,
    baselines,
    cf_pretraining,
    evaluation,
    indexing,
    ingestion,
    llm4rec,
    preprocessing,
    prompting,
    recommend,
    reporting,
    tokenization,
)
from tokenrec_pipeline.pipelines.reporting.nodes import compare_sweep_quantizers

MLFLOW_MODEL_NAME = "tokenrec_recommender"

SWEEP = "quantizer_sweep"
SWEEP_QUANTIZERS = ("mq", "rqvae", "vqvae", "kmeans")
"""The paper's Table VI substitutions, one namespace ``quantizer_sweep.<quantizer>`` each."""
SWEEP_SHARED = {"interactions_split", "cf_embeddings", "baseline_metrics", "paper_reference",
                *(f"{name}.ranks" for name in baseline_table_models())}
"""What every quantizer's branch reads from an earlier ``full`` run instead of recomputing it: the split, the CF
embeddings and the baseline table's models (none of them depends on the tokenizer)."""


def _as_stage(name: str, pipeline: Pipeline) -> Pipeline:
    """The stage's nodes under the namespace ``name``, dataset and parameter names unchanged.

    The namespace groups a stage into one collapsible block in ``kedro viz`` and one task in the
    Airflow DAG (``kedro airflow create --group-by namespace``): one task per stage, the GPU stage
    (``llm4rec``) on its own.
    """
    return Pipeline(pipeline, namespace=name, prefix_datasets_with_namespace=False)


def quantizer_sweep_pipeline() -> Pipeline:
    """``kedro run --pipeline=quantizer_sweep``: tokenization -> prompting -> llm4rec -> indexing -> autoregressive
    -> evaluation once per quantizer, each under the namespace ``quantizer_sweep.<quantizer>`` (its own artefacts,
    and its own MLflow child run: ``RunRecordHooks``), on :data:`SWEEP_SHARED` from an earlier ``full`` run, then
    one Table VI comparison of the branches' headlines.

    Every parameter keeps its global name except ``tokenizer.quantizer``, which Kedro's namespacing turns into
    ``quantizer_sweep.<quantizer>.tokenizer.quantizer`` (``conf/base/parameters_quantizer_sweep.yml``).
    """
    stages = (tokenization, prompting, llm4rec, indexing, autoregressive, evaluation)
    branch = sum((stage.create_pipeline() for stage in stages), Pipeline([]))
    shared = SWEEP_SHARED & branch.inputs()
    parameters = {name: name for name in branch.inputs()
                  if name.startswith("params:") and name != "params:tokenizer.quantizer"}
    branches = [Pipeline(branch, namespace=f"{SWEEP}.{quantizer}", inputs=shared, parameters=parameters)
                for quantizer in SWEEP_QUANTIZERS]
    comparison = Pipeline([
        Node(compare_sweep_quantizers, [f"{SWEEP}.{q}.headline_metrics" for q in SWEEP_QUANTIZERS],
             [f"{SWEEP}.quantizer_comparison", f"{SWEEP}.quantizer_comparison_figure"],
             name="compare_sweep_quantizers", namespace=SWEEP),
    ])
    return sum(branches, Pipeline([])) + comparison


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
            "cf_pretraining": cf_pretraining.create_pipeline,  # the teacher: LightGCN -> cf_embeddings
            "baselines": baselines.create_pipeline,  # Pop, MF, SASRec, BERT4Rec and the baseline table
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
        # the part of baselines that trains SASRec / BERT4Rec, runnable alone (same nodes, same namespace)
        "sequential_baselines": _as_stage("baselines", baselines.create_sequential_pipeline()),
        "recommend": _as_stage("recommend", recommend.create_pipeline()),
        "add_items": _as_stage("add_items", recommend.create_add_items_pipeline()),
        SWEEP: quantizer_sweep_pipeline(),
    }
    return {**stages, **extra, "full": full, "__default__": full}
