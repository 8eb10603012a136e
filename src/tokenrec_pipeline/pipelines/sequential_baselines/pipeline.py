"""Sequential baselines pipeline: SASRec and BERT4Rec as two namespaced variants of one node, each
writing ``<model>.metrics`` / ``<model>.ranks`` (read by ``cf_pretraining``'s baseline report)."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_sequential_baseline

SEQUENTIAL_MODELS = ("sasrec", "bert4rec")


def _sequential_model_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                train_sequential_baseline,
                inputs=["interactions_split", "params:model", "params:baselines.enabled", "params:seed"],
                outputs=["metrics", "ranks", "training_history", "training_curves"],
                name="train_sequential_baseline",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum(
        (
            Pipeline(
                _sequential_model_pipeline(),
                namespace=model,
                inputs={"interactions_split"},
                parameters={"params:model": f"params:baselines.{model}",
                            "params:baselines.enabled": "params:baselines.enabled", "params:seed": "params:seed"},
            )
            for model in SEQUENTIAL_MODELS
        ),
        Pipeline([]),
    )
