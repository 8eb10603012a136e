"""LLM4Rec pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_llm4rec_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(train_llm4rec_model,
             ["train_prompts", "valid_prompts", "cf_embeddings", "user.tokenizer", "item.tokenizer",
              "params:tokenizer", "params:llm4rec", "params:seed"],
             ["llm4rec_model", "llm4rec_training_history", "llm4rec_training_curves"], name="train_llm4rec_model"),
    ])
