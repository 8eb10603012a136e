"""LLM4Rec pipeline: the default recipe and the paper's, trained on the same prompts."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_llm4rec_model, train_paper_llm4rec_model

# Both recipes read the same inputs (and the same parameter blocks): only their node functions differ.
INPUTS = ["train_prompts", "fold_in_train_prompts", "valid_prompts", "cf_embeddings", "user.tokenizer",
          "item.tokenizer", "params:llm4rec", "params:llm4rec_paper"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(train_llm4rec_model, [*INPUTS, "params:seed"],
             ["llm4rec_model", "llm4rec_training_history", "llm4rec_training_curves"], name="train_llm4rec_model"),
        Node(train_paper_llm4rec_model, [*INPUTS, "params:baselines.enabled", "params:seed"],
             ["paper.llm4rec_model", "paper.llm4rec_training_history", "paper.llm4rec_training_curves"],
             name="train_paper_llm4rec_model"),
    ])
