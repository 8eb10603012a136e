"""Indexing pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_index


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([Node(build_index, ["cf_embeddings", "llm4rec_model", "params:indexing", "params:seed"],
                          "item_index", name="build_item_index")])
