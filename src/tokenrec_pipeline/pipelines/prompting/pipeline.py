"""Prompting pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_prompts


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(build_prompts, ["interactions_split", "user.tokens", "item.tokens", "params:prompting", "params:seed"],
             ["train_prompts", "valid_prompts", "test_prompts"], name="build_prompts"),
    ])
