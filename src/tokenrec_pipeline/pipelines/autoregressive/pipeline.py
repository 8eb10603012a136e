"""Autoregressive baseline pipeline: train the generator on the llm4rec prompts, evaluate beam search."""

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_autoregressive_model, train_autoregressive_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(train_autoregressive_model,
             ["train_prompts", "valid_prompts", "item.tokens", "user.tokenizer", "item.tokenizer",
              "params:llm4rec", "params:autoregressive", "params:baselines.enabled", "params:seed"],
             ["autoregressive_model", "autoregressive_training_history", "autoregressive_training_curves"],
             name="train_autoregressive_model"),
        Node(evaluate_autoregressive_model,
             ["autoregressive_model", "test_prompts", "item.tokens", "params:autoregressive"],
             ["autoregressive.metrics", "autoregressive.ranks", "autoregressive_generation_summary"],
             name="evaluate_autoregressive_model"),
    ])
