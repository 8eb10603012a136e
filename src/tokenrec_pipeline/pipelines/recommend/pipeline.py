"""recommend (top-K for users / histories) and add_items (new items into the index) pipelines."""

from kedro.pipeline import Node, Pipeline

from .nodes import add_items_to_catalogue, prepare_requests, recommend_items


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(prepare_requests,
             ["params:recommend", "interactions_split", "user_map", "item_map", "user.tokens", "item.tokens",
              "cf_embeddings", "user.tokenizer", "params:prompting", "params:tokenizer", "params:seed"],
             "recommendation_prompts", name="prepare_requests"),
        Node(recommend_items, ["llm4rec_model", "item_index", "recommendation_prompts", "item_map", "params:recommend"],
             "recommendations", name="recommend_items"),
    ])


def create_add_items_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(add_items_to_catalogue,
             ["new_item_interactions", "item_index", "item_map", "item.tokens", "user_map", "cf_embeddings",
              "item.tokenizer", "params:tokenizer"],
             ["item_index_with_new_items", "item_map_with_new_items", "item_tokens_with_new_items"],
             name="add_items_to_catalogue"),
    ])
