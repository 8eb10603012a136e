"""Reporting pipeline: one node per figure, namespaced ``reporting`` (figures ``reporting.<name>``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    compare_quantizers,
    plot_items_by_first_token,
    plot_items_by_popularity,
    plot_metrics_by_model,
    plot_tokenizer_diagnostics,
    plot_training_curves,
)

INPUTS = {"evaluation_metrics", "tokenizer_diagnostics", "cf_embeddings", "item.tokens", "item_map",
          "lightgcn.training_history", "mf.training_history", "llm4rec_training_history", "mlflow_runs",
          "headline_metrics"}


def create_pipeline(**kwargs) -> Pipeline:
    figures = Pipeline([
        Node(plot_metrics_by_model, ["evaluation_metrics", "params:reporting"], "metrics_by_model",
             name="plot_metrics_by_model"),
        Node(plot_tokenizer_diagnostics, "tokenizer_diagnostics", "tokenizer_diagnostics_figure",
             name="plot_tokenizer_diagnostics"),
        Node(plot_items_by_first_token, ["cf_embeddings", "item.tokens", "params:reporting"],
             "items_by_first_token", name="plot_items_by_first_token"),
        Node(plot_items_by_popularity, ["cf_embeddings", "item_map"], "items_by_popularity",
             name="plot_items_by_popularity"),
        Node(plot_training_curves, ["lightgcn.training_history", "mf.training_history", "llm4rec_training_history",
                                    "params:baselines.enabled", "params:cf_pretraining.model", "params:reporting"],
             "training_curves", name="plot_training_curves"),
        Node(compare_quantizers, ["mlflow_runs", "headline_metrics", "params:dataset"],
             ["quantizer_comparison", "quantizer_comparison_figure"], name="compare_quantizers"),
    ])
    return Pipeline(figures, namespace="reporting", inputs=INPUTS,
                    parameters={"params:reporting": "params:reporting",
                                "params:baselines.enabled": "params:baselines.enabled",
                                "params:cf_pretraining.model": "params:cf_pretraining.model",
                                "params:dataset": "params:dataset"})
