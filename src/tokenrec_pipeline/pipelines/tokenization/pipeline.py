"""Tokenization pipeline: one namespaced fit+tokenise pipeline per side (user, item)."""

from kedro.pipeline import Node, Pipeline

from .nodes import fit_id_tokenizer, report_tokenizers, tokenize_ids, tokenizer_inputs


def _side_pipeline() -> Pipeline:
    return Pipeline(
        [
            Node(fit_id_tokenizer,
                 ["fit_vectors", "params:tokenizer", "params:tokenizer.quantizer", "params:side", "params:seed"],
                 "tokenizer", name="fit_id_tokenizer"),
            Node(tokenize_ids, ["tokenizer", "all_vectors"], ["tokens", "diagnostics"],
                 name="tokenize_ids"),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    sides = [
        Pipeline(
            _side_pipeline(),
            namespace=side,
            parameters={"params:tokenizer": "params:tokenizer",
                        "params:tokenizer.quantizer": "params:tokenizer.quantizer",
                        "params:side": f"params:tokenizer.{side}",
                        "params:seed": "params:seed"},
        )
        for side in ("user", "item")
    ]
    return (
        Pipeline([
            Node(tokenizer_inputs, "cf_embeddings",
                 ["user.fit_vectors", "user.all_vectors", "item.fit_vectors", "item.all_vectors"],
                 name="tokenizer_inputs"),
        ])
        + sum(sides, Pipeline([]))
        + Pipeline([
            Node(report_tokenizers, ["user.diagnostics", "item.diagnostics", "params:tokenizer.quantizer"],
                 ["tokenizer_diagnostics", "tokenizer_diagnostics_mlflow"], name="report_tokenizers"),
        ])
    )
