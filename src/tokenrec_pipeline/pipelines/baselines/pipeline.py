"""Baselines pipeline: Pop, BPR-MF (a namespaced variant of the CF training node ``cf_pretraining`` uses for
LightGCN), SASRec and BERT4Rec (two namespaced variants of one node), each writing ``<model>.metrics`` /
``<model>.ranks``, then one baseline table of every ``in_baseline_table`` entry of the registry
(``tokenrec_pipeline.core.baselines``), LightGCN's rows from ``cf_pretraining`` included."""

from kedro.pipeline import Node, Pipeline

from tokenrec_pipeline.core.baselines import metrics_datasets

from .nodes import evaluate_popularity, report_baselines, train_cf_model, train_sequential_baseline

CF_BASELINES = ("mf",)
SEQUENTIAL_BASELINES = ("sasrec", "bert4rec")


def _cf_baseline_pipeline(model: str) -> Pipeline:
    """``<model>.train_cf_model`` with ``baselines.<model>``'s settings; trained when ``<model>`` is in
    ``baselines.enabled`` or is ``cf_pretraining.model`` (its curve is then drawn; its row only when enabled)."""
    node = Node(
        train_cf_model,
        inputs=["interactions_split", "params:model", "params:cf_pretraining.fold_in", "params:seed",
                "params:baselines.enabled", "params:cf_pretraining.model"],
        outputs=["cf_embeddings", "training_history", "metrics", "ranks", "training_curves"],
        name="train_cf_model",
    )
    return Pipeline(
        [node], namespace=model, inputs={"interactions_split"},
        parameters={"params:model": f"params:baselines.{model}",
                    "params:cf_pretraining.fold_in": "params:cf_pretraining.fold_in", "params:seed": "params:seed",
                    "params:baselines.enabled": "params:baselines.enabled",
                    "params:cf_pretraining.model": "params:cf_pretraining.model"},
    )


def _sequential_baseline_pipeline(model: str) -> Pipeline:
    node = Node(
        train_sequential_baseline,
        inputs=["interactions_split", "params:model", "params:baselines.enabled", "params:seed"],
        outputs=["metrics", "ranks", "training_history", "training_curves"],
        name="train_sequential_baseline",
    )
    return Pipeline(
        [node], namespace=model, inputs={"interactions_split"},
        parameters={"params:model": f"params:baselines.{model}",
                    "params:baselines.enabled": "params:baselines.enabled", "params:seed": "params:seed"},
    )


def create_sequential_pipeline(**kwargs) -> Pipeline:
    """SASRec and BERT4Rec alone (``kedro run --pipeline=sequential_baselines``), without the table."""
    return sum((_sequential_baseline_pipeline(model) for model in SEQUENTIAL_BASELINES), Pipeline([]))


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(evaluate_popularity, ["interactions_split", "params:baselines.enabled"], ["pop.metrics", "pop.ranks"],
             name="evaluate_popularity"),
        *(_cf_baseline_pipeline(model) for model in CF_BASELINES),
        create_sequential_pipeline(),
        Node(report_baselines, ["params:baselines.enabled", *metrics_datasets()],
             ["baseline_metrics", "baseline_metrics_markdown", "baseline_metrics_mlflow"], name="report_baselines"),
    ])
