"""Preprocessing pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import apply_k_core, make_implicit_feedback, split_interactions, summarise_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(make_implicit_feedback, ["interactions", "params:preprocessing"],
                 "implicit_interactions", name="make_implicit_feedback"),
            Node(apply_k_core, ["implicit_interactions", "params:preprocessing"],
                 "k_core_interactions", name="apply_k_core"),
            Node(split_interactions, ["k_core_interactions", "params:preprocessing", "params:seed"],
                 ["interactions_split", "user_map", "item_map"], name="split_interactions"),
            Node(summarise_dataset, "interactions_split",
                 ["dataset_statistics", "dataset_statistics_metrics"], name="summarise_dataset"),
        ]
    )
