"""Nodes of the reporting stage: thin wrappers over ``tokenrec_pipeline.reporting.figures``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tokenrec_pipeline.core.baselines import cf_model_trained
from tokenrec_pipeline.reporting.figures import (
    MissingTableError,
    item_projection_by_first_token,
    item_projection_by_popularity,
    metrics_by_model_figure,
    quantizer_comparison_figure,
    require_table,
    tokenizer_diagnostics_figure,
    training_curves_figure,
)
from tokenrec_pipeline.reporting.run_summary import headlines_from_runs, quantizer_comparison


def plot_metrics_by_model(evaluation_metrics: pd.DataFrame, reporting: dict) -> go.Figure:
    """HR/NDCG@10/20/30 of every model in ``evaluation_metrics`` (``reporting.metrics_split``), seen vs unseen users."""
    return metrics_by_model_figure(evaluation_metrics, split=reporting["metrics_split"],
                                   metric_names=reporting["metrics"], table_name="evaluation_metrics")


def plot_tokenizer_diagnostics(tokenizer_diagnostics: pd.DataFrame) -> go.Figure:
    """Codebook utilisation per codebook, collision rate and reconstruction error of the run's quantizer."""
    return tokenizer_diagnostics_figure(tokenizer_diagnostics, table_name="tokenizer_diagnostics")


def _item_embeddings(cf_embeddings: dict) -> np.ndarray:
    if not cf_embeddings or "item_embeddings" not in cf_embeddings:
        raise MissingTableError(
            f"'cf_embeddings' has no 'item_embeddings' tensor (it has {sorted(cf_embeddings or {})})."
        )
    return cf_embeddings["item_embeddings"].detach().cpu().numpy()


def plot_items_by_first_token(cf_embeddings: dict, item_tokens: pd.DataFrame, reporting: dict) -> plt.Figure:
    """2-D PCA of the item CF vectors coloured by each item's first token."""
    return item_projection_by_first_token(_item_embeddings(cf_embeddings), item_tokens,
                                          max_legend=int(reporting["max_legend_tokens"]), table_name="item.tokens")


def plot_items_by_popularity(cf_embeddings: dict, item_map: pd.DataFrame) -> plt.Figure:
    """2-D PCA of the item CF vectors coloured by training popularity (``item_map.train_count``)."""
    vectors = _item_embeddings(cf_embeddings)
    require_table(item_map, "item_map", ("item_id", "train_count"))
    counts = item_map.set_index("item_id")["train_count"].reindex(range(len(vectors))).fillna(0).to_numpy()
    return item_projection_by_popularity(vectors, counts, table_name="item_map")


def plot_training_curves(lightgcn_history: pd.DataFrame, mf_history: pd.DataFrame,
                         llm4rec_history: pd.DataFrame, enabled: list[str] | str, cf_model: str,
                         reporting: dict) -> go.Figure:
    """Loss and validation NDCG@20 per epoch of LightGCN, MF and the language model.

    A CF model that was switched off (neither in ``baselines.enabled`` nor ``cf_pretraining.model``) was not
    trained and has no curve; every model that was trained must have its history, else the error names it.
    """
    cf_histories = {"lightgcn": lightgcn_history, "mf": mf_history}
    histories = {f"{name}.training_history": history for name, history in cf_histories.items()
                 if cf_model_trained(name, enabled, cf_model)}
    histories["llm4rec_training_history"] = llm4rec_history
    return training_curves_figure(histories, metric=reporting["curve_metric"])


def compare_quantizers(mlflow_runs: pd.DataFrame, headline_metrics: pd.DataFrame,
                       dataset: str) -> tuple[pd.DataFrame, go.Figure]:
    """This run's quantizer beside the latest MLflow run of every other quantizer on the same ``dataset``
    (tag ``dataset``): the paper's Table VI layout (quantizer x TokenRec / best baseline test HR@20 and NDCG@20,
    item / user collision rates) as a table and a figure. This run's row comes from its own ``headline_metrics``;
    with no other run in MLflow the table has that one row."""
    others = headlines_from_runs(mlflow_runs)
    quantizer = str(headline_metrics["quantizer"].iloc[0])
    others = others[(others["dataset"] == dataset) & (others["quantizer"] != quantizer)]
    this_run = headline_metrics.assign(run_name="this run", run_id="")
    table = quantizer_comparison(pd.concat([others, this_run], ignore_index=True) if len(others) else this_run)
    return table, quantizer_comparison_figure(table)


def compare_sweep_quantizers(*headline_metrics: pd.DataFrame) -> tuple[pd.DataFrame, go.Figure]:
    """The quantizer sweep's Table VI: one row per branch's ``headline_metrics``, as a table and a figure."""
    table = quantizer_comparison(pd.concat(headline_metrics, ignore_index=True))
    return table, quantizer_comparison_figure(table)
