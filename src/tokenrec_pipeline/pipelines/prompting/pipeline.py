"""Prompting pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_prompts


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(build_prompts,
             ["interactions_split", "user.tokens", "item.tokens", "cf_embeddings", "user.tokenizer", "params:prompting",
              "params:cf_pretraining.fold_in", "params:seed"],
             ["train_prompts", "fold_in_train_prompts", "valid_prompts", "test_prompts"], name="build_prompts"),
    ])
