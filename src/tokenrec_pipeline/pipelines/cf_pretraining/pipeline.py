"""CF pretraining pipeline: LightGCN and MF as two namespaced variants of one training pipeline,
Pop beside them, the chosen model's embeddings for the tokenizers, and one baseline table that also
holds the sequential baselines (SASRec, BERT4Rec), so this stage includes their pipeline."""

from kedro.pipeline import Node, Pipeline

from tokenrec_pipeline.pipelines import sequential_baselines

from .nodes import evaluate_popularity, report_baselines, select_cf_embeddings, train_cf_model

CF_MODELS = ("lightgcn", "mf")


def _cf_model_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(
                train_cf_model,
                inputs=["interactions_split", "params:model", "params:cf_pretraining.fold_in", "params:seed",
                        "params:baselines.enabled", "params:cf_pretraining.model"],
                outputs=["cf_embeddings", "training_history", "metrics", "ranks", "training_curves"],
                name="train_cf_model",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    variants = [
        Pipeline(
            _cf_model_pipeline(),
            namespace=model,
            inputs={"interactions_split"},
            parameters={"params:model": f"params:cf_pretraining.{model}",
                        "params:cf_pretraining.fold_in": "params:cf_pretraining.fold_in", "params:seed": "params:seed",
                        "params:baselines.enabled": "params:baselines.enabled",
                        "params:cf_pretraining.model": "params:cf_pretraining.model"},
        )
        for model in CF_MODELS
    ]
    return sum(variants, Pipeline([])) + sequential_baselines.create_pipeline() + Pipeline(
        [
            Node(evaluate_popularity, ["interactions_split", "params:baselines.enabled"], ["pop.metrics", "pop.ranks"],
                 name="evaluate_popularity"),
            Node(select_cf_embeddings, ["lightgcn.cf_embeddings", "mf.cf_embeddings", "params:cf_pretraining"],
                 "cf_embeddings", name="select_cf_embeddings"),
            Node(report_baselines, ["params:baselines.enabled", "pop.metrics", "mf.metrics", "lightgcn.metrics",
                                    "sasrec.metrics", "bert4rec.metrics"],
                 ["baseline_metrics", "baseline_metrics_markdown", "baseline_metrics_mlflow"], name="report_baselines"),
        ]
    )
