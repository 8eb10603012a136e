"""Evaluation pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_tokenrec, measure_inference_latency, report_evaluation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(evaluate_tokenrec, ["llm4rec_model", "item_index", "test_prompts", "interactions_split"],
             ["tokenrec.metrics", "tokenrec.ranks"], name="evaluate_tokenrec"),
        Node(measure_inference_latency,
             ["llm4rec_model", "item_index", "test_prompts", "cf_embeddings", "params:evaluation"],
             "inference_latency", name="measure_inference_latency"),
        Node(report_evaluation, ["baseline_metrics", "tokenrec.metrics", "inference_latency"],
             ["evaluation_metrics", "evaluation_metrics_markdown", "evaluation_metrics_mlflow", "evaluation_chart"],
             name="report_evaluation"),
    ])
