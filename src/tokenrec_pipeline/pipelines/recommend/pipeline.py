"""recommend (top-K for users / histories) and add_items (new items into the index) pipelines."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    add_items_to_catalogue,
    example_recommendation_requests,
    prepare_requests,
    recommend_items,
    requests_from_parameters,
)


def create_inference_pipeline(**kwargs) -> Pipeline:
    """recommendation_requests -> recommendations: the part packaged as the MLflow model."""
    return Pipeline([
        Node(prepare_requests,
             ["recommendation_requests", "interactions_split", "user_map", "item_map", "user.tokens", "item.tokens",
              "cf_embeddings", "user.tokenizer", "params:prompting",
              "params:recommend.on_unknown_item", "params:seed"],
             "recommendation_prompts", name="prepare_requests"),
        Node(recommend_items, ["llm4rec_model", "item_index", "recommendation_prompts", "item_map",
                               "params:recommend.top_k"],
             "recommendations", name="recommend_items"),
    ])


def create_example_requests_pipeline(**kwargs) -> Pipeline:
    """Part of training: an example request table, the MLflow model's input template and signature."""
    return Pipeline([
        Node(example_recommendation_requests, ["user_map", "interactions_split", "item_map"],
             "recommendation_requests", name="example_recommendation_requests"),
    ])


def create_pipeline(**kwargs) -> Pipeline:
    """``kedro run --pipeline=recommend``: requests from ``params:recommend`` -> recommendations."""
    return Pipeline([
        Node(requests_from_parameters, "params:recommend", "recommendation_requests",
             name="requests_from_parameters"),
    ]) + create_inference_pipeline()


def create_add_items_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(add_items_to_catalogue,
             ["new_item_interactions", "item_index", "item_map", "item.tokens", "user_map", "cf_embeddings",
              "item.tokenizer"],
             ["item_index_with_new_items", "item_map_with_new_items", "item_tokens_with_new_items"],
             name="add_items_to_catalogue"),
    ])
