"""Figures of a run's results, built from the project's tables (importable without Kedro).

Interactive figures (metrics by model, tokenizer diagnostics, training curves) are plotly
``Figure`` objects: kedro viz previews them and the notebooks show them. The item projections are
matplotlib figures (thousands of points render better as a PNG). Every function checks its input
table first and raises :class:`MissingTableError` naming the table, so an empty or missing table
fails loudly instead of drawing an empty chart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.colors import qualitative  # noqa: E402
from plotly.subplots import make_subplots  # noqa: E402

from tokenrec_pipeline.training.loop import VALID_PREFIX  # noqa: E402

RANKING_METRICS = ("HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30")
PALETTE = qualitative.Plotly + qualitative.D3


class MissingTableError(ValueError):
    """A figure's input table is missing, empty or lacks a column it needs."""


def require_table(table: pd.DataFrame | None, name: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """``table`` if it has rows and every column in ``columns``; else :class:`MissingTableError` naming ``name``."""
    if table is None or len(table) == 0:
        raise MissingTableError(
            f"Table '{name}' is missing or empty, so its figure cannot be drawn. Run the stage that writes "
            f"'{name}' first (e.g. `kedro run --pipeline=full`).")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MissingTableError(f"Table '{name}' lacks column(s) {missing} (it has {list(table.columns)}).")
    return table


def _colours(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def metrics_by_model_figure(metrics: pd.DataFrame, split: str = "test",
                            metric_names: Sequence[str] = RANKING_METRICS,
                            table_name: str = "evaluation_metrics") -> go.Figure:
    """Grouped bars: one panel per user group (seen, unseen), HR/NDCG@K on the x axis, a bar per model.

    ``metrics`` is the long table (``model, split, user_group, metric, value[, n_users]``); models
    and groups are taken from it in order of appearance, so new rows (other baselines) show up as is.
    """
    require_table(metrics, table_name, ("model", "split", "user_group", "metric", "value"))
    part = metrics[(metrics["split"] == split) & metrics["metric"].isin(metric_names)]
    require_table(part, f"{table_name} (split '{split}', metrics {list(metric_names)})")
    groups = list(dict.fromkeys(part["user_group"]))
    models = list(dict.fromkeys(part["model"]))
    colours = _colours(models)

    def panel_title(group: str) -> str:
        users = part.loc[part["user_group"] == group, "n_users"] if "n_users" in part else pd.Series(dtype=float)
        return f"{group} users" + (f" (n = {int(users.max())})" if len(users) else "")

    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True, subplot_titles=[panel_title(g) for g in groups])
    for col, group in enumerate(groups, start=1):
        rows = part[part["user_group"] == group]
        for model in models:
            values = rows[rows["model"] == model].set_index("metric")["value"]
            if values.empty:
                continue
            fig.add_trace(go.Bar(x=list(metric_names), y=[values.get(m, np.nan) for m in metric_names], name=model,
                                 legendgroup=model, showlegend=col == 1, marker_color=colours[model]),
                          row=1, col=col)
        fig.update_xaxes(title_text="metric @ cut-off K (top-K items)", row=1, col=col)
    fig.update_yaxes(title_text="value (mean over users, 0–1)", row=1, col=1)
    fig.update_layout(title=f"{split.capitalize()} HR and NDCG at 10/20/30 by model, seen and unseen users",
                      barmode="group", legend_title_text="model")
    return fig


def _utilisation_columns(table: pd.DataFrame) -> list[tuple[int, str]]:
    found = [(int(m.group(1)), c) for c in table.columns if (m := re.fullmatch(r"codebook(\d+)_utilisation", c))]
    return sorted(found)


def tokenizer_diagnostics_figure(diagnostics: pd.DataFrame, table_name: str = "tokenizer_diagnostics") -> go.Figure:
    """Three panels per quantizer and side: utilisation of each codebook, collision rate, reconstruction error.

    ``diagnostics`` has one row per (side, quantizer) with ``codebook{k}_utilisation``,
    ``collision_rate`` and ``recon_mse_relative`` (the tokenization stage's table). An optional
    ``label`` column names the bars instead of ``quantizer`` (e.g. one label per MLflow run).
    """
    require_table(diagnostics, table_name, ("side", "quantizer", "collision_rate", "recon_mse_relative"))
    codebooks = _utilisation_columns(diagnostics)
    if not codebooks:
        raise MissingTableError(f"Table '{table_name}' has no codebook<k>_utilisation column "
                                f"(it has {list(diagnostics.columns)}).")
    labels = diagnostics["label"] if "label" in diagnostics else diagnostics["quantizer"]
    table = diagnostics.assign(_label=labels.astype(str))
    colours = _colours(list(dict.fromkeys(table["_label"])))
    fig = make_subplots(rows=1, cols=3, column_widths=[0.5, 0.25, 0.25],
                        subplot_titles=("Codebook utilisation", "Token collisions", "Reconstruction error"))
    for label, rows in table.groupby("_label", sort=False):
        style = {"name": label, "legendgroup": label, "marker_color": colours[label]}
        fig.add_trace(go.Bar(x=[f"{r.side} codebook {k}" for r in rows.itertuples() for k, _ in codebooks],
                             y=[100 * getattr(r, col) for r in rows.itertuples() for _, col in codebooks],
                             **style), row=1, col=1)
        fig.add_trace(go.Bar(x=list(rows["side"]), y=list(100 * rows["collision_rate"]), showlegend=False, **style),
                      row=1, col=2)
        fig.add_trace(go.Bar(x=list(rows["side"]), y=list(rows["recon_mse_relative"]), showlegend=False, **style),
                      row=1, col=3)
    fig.update_yaxes(title_text="codewords used at least once (% of L)", range=[0, 105], row=1, col=1)
    fig.update_yaxes(title_text="ids sharing their K-token tuple (%)", row=1, col=2)
    fig.update_yaxes(title_text="MSE ÷ embedding variance (1 = mean vector)", row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="side and codebook" if col == 1 else "side (user / item tokenizer)", row=1, col=col)
    fig.update_layout(title="Tokenizer quality per quantizer: codebook usage, collisions, reconstruction",
                      barmode="group", legend_title_text="quantizer")
    return fig


def training_curves_figure(histories: Mapping[str, pd.DataFrame], metric: str = "NDCG@20") -> go.Figure:
    """Training loss and validation ``metric`` per epoch, one line per model.

    ``histories`` maps a table name (e.g. ``lightgcn.training_history``) to its per-epoch table in the one
    history format of :mod:`tokenrec_pipeline.training.loop`: ``epoch`` (1-based, 0 = before training),
    ``loss`` and ``valid_<metric>``.
    """
    if not histories:
        raise MissingTableError("No training history table was given, so no training curve can be drawn.")
    column = f"{VALID_PREFIX}{metric}"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", f"Validation {metric}"))
    colours = _colours(list(histories))
    for name, history in histories.items():
        require_table(history, name, ("epoch", "loss"))
        if column not in history.columns:
            raise MissingTableError(f"Table '{name}' has no {column} column (it has {list(history.columns)}).")
        label = name.removesuffix(".training_history").removesuffix("_training_history")
        style = {"name": label, "legendgroup": label, "line_color": colours[name], "mode": "lines+markers"}
        fig.add_trace(go.Scatter(x=list(history["epoch"]), y=list(history["loss"]), **style), row=1, col=1)
        fig.add_trace(go.Scatter(x=list(history["epoch"]), y=list(history[column]), showlegend=False, **style),
                      row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_yaxes(title_text="training loss per sample (BPR or cosine, unitless)", row=1, col=1)
    fig.update_yaxes(title_text=f"validation {metric} (0–1)", row=1, col=2)
    fig.update_layout(title=f"Training curves: loss and validation {metric} per epoch", legend_title_text="model")
    return fig


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of ``vectors`` ``(N, d)`` and their explained-variance ratios."""
    from sklearn.decomposition import PCA

    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"PCA needs at least 2 vectors of dimension >= 2, got shape {vectors.shape}")
    pca = PCA(n_components=2, svd_solver="full").fit(vectors)
    return pca.transform(vectors), pca.explained_variance_ratio_


def _projection_axes(title: str, explained: np.ndarray) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(7.5, 6))
    ax.set_title(title)
    ax.set_xlabel(f"PC1 of item CF vectors ({100 * explained[0]:.1f}% of variance, embedding units)")
    ax.set_ylabel(f"PC2 of item CF vectors ({100 * explained[1]:.1f}% of variance, embedding units)")
    return fig, ax


def item_projection_by_first_token(item_embeddings: np.ndarray, item_tokens: pd.DataFrame, max_legend: int = 12,
                                   table_name: str = "item.tokens") -> plt.Figure:
    """PCA of the item CF vectors, each item coloured by its first token (codebook 1).

    The ``max_legend`` most common first tokens get their own colour and legend entry; the rest are
    grey, so the legend stays readable with L = 256 codewords. ``item_tokens`` is the token table
    (``id``, ``token_1``.., ``tokens``), row ``id`` = embedding row.
    """
    require_table(item_tokens, table_name, ("id", "token_1"))
    n_items = len(item_embeddings)
    tokens = item_tokens.set_index("id").reindex(range(n_items))
    if tokens["token_1"].isna().any():
        missing = np.flatnonzero(tokens["token_1"].isna().to_numpy())[:10].tolist()
        raise MissingTableError(f"Table '{table_name}' has no tokens for item ids {missing}... "
                                f"({n_items} item vectors): re-run the tokenization stage.")
    if "tokens" in tokens:  # "<i1-7><i2-3><i3-9>" -> "<i1-7>"
        names = tokens["tokens"].astype(str).str.extract(r"^(<[^>]+>)", expand=False)
        names = names.fillna("token " + tokens["token_1"].astype(int).astype(str))
    else:
        names = "token " + tokens["token_1"].astype(int).astype(str)
    coords, explained = pca_2d(item_embeddings)
    fig, ax = _projection_axes(f"Item CF vectors (PCA), coloured by first token — {n_items} items", explained)
    common = names.value_counts().index[:max_legend]
    others = ~names.isin(common).to_numpy()
    if others.any():
        ax.scatter(coords[others, 0], coords[others, 1], s=10, c="lightgrey", alpha=0.6,
                   label=f"other first tokens ({names[others].nunique()})")
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(common):
        mask = (names == name).to_numpy()
        ax.scatter(coords[mask, 0], coords[mask, 1], s=14, color=cmap(i % cmap.N), label=f"{name} ({mask.sum()} items)")
    ax.legend(title="first token (codebook 1)", fontsize=7, title_fontsize=8, loc="best", markerscale=1.5)
    fig.tight_layout()
    return fig


def item_projection_by_popularity(item_embeddings: np.ndarray, popularity: np.ndarray,
                                  table_name: str = "item_map") -> plt.Figure:
    """PCA of the item CF vectors, each item coloured by its number of training interactions (log colour scale)."""
    popularity = np.asarray(popularity, dtype=np.float64)
    if popularity.size == 0:
        raise MissingTableError(f"Table '{table_name}' gives no item popularity, so the projection cannot be drawn.")
    if popularity.shape != (len(item_embeddings),):
        raise ValueError(
            f"popularity from '{table_name}' has {popularity.size} values for {len(item_embeddings)} items"
        )
    coords, explained = pca_2d(item_embeddings)
    fig, ax = _projection_axes(f"Item CF vectors (PCA), coloured by popularity — {len(popularity)} items", explained)
    order = np.argsort(popularity)  # popular items drawn last, on top
    norm = mcolors.LogNorm(vmin=max(popularity.min(), 1.0), vmax=max(popularity.max(), 2.0))
    points = ax.scatter(coords[order, 0], coords[order, 1], s=12, c=np.clip(popularity[order], 1.0, None),
                        cmap="viridis", norm=norm, label="item (colour = popularity)")
    colorbar = fig.colorbar(points, ax=ax, label="training interactions per item (log scale)")
    colorbar.ax.yaxis.set_major_formatter(mticker.ScalarFormatter())  # 10, 20, 40 rather than 10^1
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def quantizer_comparison_figure(table: pd.DataFrame, table_name: str = "quantizer_comparison") -> go.Figure:
    """The paper's Table VI as bars: test HR@20 / NDCG@20 of TokenRec per quantizer for seen and unseen users
    (the best baseline's values as hatched bars beside them) and each quantizer's item / user collision rate.

    ``table`` is :func:`tokenrec_pipeline.reporting.run_summary.quantizer_comparison`'s (one row per quantizer).
    """
    require_table(table, table_name, ("quantizer", "tokenrec seen HR@20", "tokenrec seen NDCG@20",
                                      "item collision rate", "user collision rate"))
    quantizers = list(table["quantizer"].astype(str))
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Seen users (test)", "Unseen users (test)",
                                                        "Token collisions"))
    colours = _colours(["HR@20", "NDCG@20", "item", "user"])
    for col, group in enumerate(("seen", "unseen"), start=1):
        for metric in ("HR@20", "NDCG@20"):
            fig.add_trace(go.Bar(x=quantizers, y=list(table[f"tokenrec {group} {metric}"]), name=f"TokenRec {metric}",
                                 legendgroup=f"tokenrec {metric}", showlegend=col == 1,
                                 marker_color=colours[metric]), row=1, col=col)
            baseline = table.get(f"best_baseline {group} {metric}")
            if baseline is not None and baseline.notna().any():
                fig.add_trace(go.Bar(x=quantizers, y=list(baseline), name=f"best baseline {metric}",
                                     legendgroup=f"baseline {metric}", showlegend=col == 1,
                                     marker={"color": colours[metric], "opacity": 0.45, "pattern_shape": "/"}),
                              row=1, col=col)
        fig.update_yaxes(title_text="value (mean over users, 0–1)", row=1, col=col)
    for side in ("item", "user"):
        fig.add_trace(go.Bar(x=quantizers, y=list(100 * table[f"{side} collision rate"]), name=f"{side} collisions",
                             marker_color=colours[side]), row=1, col=3)
    fig.update_yaxes(title_text="ids sharing their K-token tuple (%)", row=1, col=3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="quantizer", row=1, col=col)
    fig.update_layout(title="Quantizers side by side (the paper's Table VI): TokenRec test HR@20 / NDCG@20, "
                            "best baseline hatched, token collisions", barmode="group", legend_title_text="")
    return fig
