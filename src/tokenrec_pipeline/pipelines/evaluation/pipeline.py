"""Evaluation pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    compare_with_reference,
    evaluate_paper_tokenrec,
    evaluate_tokenrec,
    measure_inference_latency,
    report_evaluation,
    summarise_headline,
)

COMPARED_RANKS = ["pop.ranks", "mf.ranks", "lightgcn.ranks", "sasrec.ranks", "bert4rec.ranks", "autoregressive.ranks",
                  "tokenrec.ranks", "tokenrec_paper.ranks"]
"""Per-user ranks of every model in the significance table; append a new model's ``<model>.ranks`` here."""

METRIC_TABLES = ["baseline_metrics", "autoregressive.metrics", "tokenrec.metrics", "tokenrec_paper.metrics"]
"""Long metrics tables concatenated into ``evaluation_metrics``; append a new model's ``<model>.metrics`` here."""


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(evaluate_tokenrec, ["llm4rec_model", "item_index", "test_prompts", "interactions_split"],
             ["tokenrec.metrics", "tokenrec.ranks"], name="evaluate_tokenrec"),
        Node(evaluate_paper_tokenrec, ["paper.llm4rec_model", "test_prompts", "cf_embeddings"],
             ["tokenrec_paper.metrics", "tokenrec_paper.ranks"], name="evaluate_paper_tokenrec"),
        Node(measure_inference_latency,
             ["llm4rec_model", "item_index", "test_prompts", "cf_embeddings", "params:evaluation"],
             "inference_latency", name="measure_inference_latency"),
        Node(compare_with_reference, ["params:evaluation", "params:seed", "params:baselines.enabled", *COMPARED_RANKS],
             "evaluation_significance", name="compare_with_reference"),
        Node(report_evaluation,
             ["inference_latency", "evaluation_significance", "paper_reference", "params:dataset", *METRIC_TABLES],
             ["evaluation_metrics", "evaluation_metrics_markdown", "evaluation_metrics_mlflow", "evaluation_chart"],
             name="report_evaluation"),
        Node(summarise_headline, ["evaluation_metrics", "tokenizer_diagnostics", "llm4rec_training_history"],
             ["headline_metrics", "headline_metrics_mlflow"], name="summarise_headline"),
    ])
