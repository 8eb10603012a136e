"""CF pretraining pipeline: the teacher, LightGCN (``lightgcn.train_cf_model``: embeddings, history and its own
evaluation rows ``lightgcn.metrics`` / ``lightgcn.ranks``, which the baselines stage's table reads), and
``cf_embeddings``, the embeddings of ``cf_pretraining.model`` that the tokenizers learn from. Pop, MF, SASRec and
BERT4Rec are the ``baselines`` stage."""

from kedro.pipeline import Node, Pipeline

from .nodes import select_cf_embeddings, train_cf_model

TEACHER = "lightgcn"


def create_pipeline(**kwargs) -> Pipeline:
    teacher = Pipeline(
        [
            Node(
                train_cf_model,
                inputs=["interactions_split", "params:model", "params:cf_pretraining.fold_in", "params:seed",
                        "params:baselines.enabled", "params:cf_pretraining.model"],
                outputs=["cf_embeddings", "training_history", "metrics", "ranks", "training_curves"],
                name="train_cf_model",
            )
        ],
        namespace=TEACHER,
        inputs={"interactions_split"},
        parameters={"params:model": f"params:cf_pretraining.{TEACHER}",
                    "params:cf_pretraining.fold_in": "params:cf_pretraining.fold_in", "params:seed": "params:seed",
                    "params:baselines.enabled": "params:baselines.enabled",
                    "params:cf_pretraining.model": "params:cf_pretraining.model"},
    )
    return teacher + Pipeline([
        Node(select_cf_embeddings, [f"{TEACHER}.cf_embeddings", "interactions_split", "params:cf_pretraining",
                                    "params:baselines.mf", "params:seed"],
             "cf_embeddings", name="select_cf_embeddings"),
    ])
