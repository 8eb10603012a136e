"""Figure builders (tokenrec_pipeline.reporting.figures) and reporting nodes on tiny tables."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from tokenrec_pipeline.pipelines.reporting.nodes import (
    plot_items_by_popularity,
    plot_metrics_by_model,
    plot_training_curves,
)
from tokenrec_pipeline.reporting.figures import (
    MissingTableError,
    item_projection_by_first_token,
    item_projection_by_popularity,
    metrics_by_model_figure,
    pca_2d,
    tokenizer_diagnostics_figure,
    training_curves_figure,
)

METRICS = ["HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30"]
REPORTING = {"metrics_split": "test", "metrics": METRICS, "curve_metric": "NDCG@20", "max_legend_tokens": 2}


def _metrics_table(models=("pop", "lightgcn", "tokenrec", "sasrec")) -> pd.DataFrame:
    rows = [{"model": m, "split": split, "user_group": g, "metric": metric,
             "value": 0.01 * (i + 1) + 0.001 * j + (0.5 if split == "valid" else 0),
             "n_users": 30 if g == "seen" else 5}
            for i, m in enumerate(models) for split in ("valid", "test") for g in ("seen", "unseen")
            for j, metric in enumerate(METRICS)]
    return pd.DataFrame(rows)


def test_metrics_by_model_has_every_model_of_the_table_per_user_group():
    fig = plot_metrics_by_model(_metrics_table(), REPORTING)
    assert "by model" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert [a.text for a in fig.layout.annotations] == ["seen users (n = 30)", "unseen users (n = 5)"]
    assert len(fig.data) == 4 * 2  # a bar trace per model and panel, nothing hard-coded
    assert [t.name for t in fig.data if t.showlegend] == ["pop", "lightgcn", "tokenrec", "sasrec"]
    sasrec_unseen = [t for t in fig.data if t.name == "sasrec" and t.xaxis == "x2"][0]
    assert list(sasrec_unseen.x) == METRICS
    assert sasrec_unseen.y == pytest.approx([0.04 + 0.001 * j for j in range(6)])  # test split, not valid


@pytest.mark.parametrize("table", [None, pd.DataFrame(), _metrics_table().query("split == 'valid'")])
def test_metrics_by_model_refuses_empty_input_naming_the_table(table):
    with pytest.raises(MissingTableError, match="evaluation_metrics"):
        metrics_by_model_figure(table)


def test_metrics_by_model_names_a_missing_column():
    with pytest.raises(MissingTableError, match=r"evaluation_metrics.*\['user_group'\]"):
        metrics_by_model_figure(_metrics_table().drop(columns="user_group"))


def _diagnostics() -> pd.DataFrame:
    return pd.DataFrame([
        {"side": side, "quantizer": q, "collision_rate": c, "recon_mse_relative": r,
         "codebook1_utilisation": u, "codebook2_utilisation": u / 2, "codebook3_utilisation": 1.0}
        for q, c, r, u in (("mq", 0.02, 0.3, 0.9), ("rqvae", 0.01, 0.2, 0.8)) for side in ("user", "item")
    ])


def test_tokenizer_diagnostics_shows_each_codebook_collisions_and_reconstruction_per_quantizer():
    fig = tokenizer_diagnostics_figure(_diagnostics())
    assert fig.layout.title.text and fig.layout.legend.title.text == "quantizer"
    assert [a.text for a in fig.layout.annotations] == [
        "Codebook utilisation", "Token collisions", "Reconstruction error"
    ]
    for axis in ("yaxis", "yaxis2", "yaxis3", "xaxis", "xaxis2", "xaxis3"):
        assert fig.layout[axis].title.text
    assert "%" in fig.layout.yaxis.title.text and "%" in fig.layout.yaxis2.title.text
    utilisation = {t.name: t for t in fig.data if t.xaxis == "x"}
    assert set(utilisation) == {"mq", "rqvae"}
    assert list(utilisation["mq"].x) == [f"{s} codebook {k}" for s in ("user", "item") for k in (1, 2, 3)]
    assert utilisation["rqvae"].y == pytest.approx([80, 40, 100] * 2)
    collisions = {t.name: t.y for t in fig.data if t.xaxis == "x2"}
    assert collisions["mq"] == pytest.approx([2.0, 2.0])


def test_tokenizer_diagnostics_refuses_empty_or_incomplete_tables():
    with pytest.raises(MissingTableError, match="tokenizer_diagnostics"):
        tokenizer_diagnostics_figure(pd.DataFrame())
    no_codebooks = _diagnostics().drop(columns=[f"codebook{k}_utilisation" for k in (1, 2, 3)])
    with pytest.raises(MissingTableError, match="codebook<k>_utilisation"):
        tokenizer_diagnostics_figure(no_codebooks)


def _history(metric_column: str, n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {"epoch": range(1, n + 1), "loss": np.linspace(0.7, 0.4, n), metric_column: np.linspace(0.1, 0.2, n)}
    )


def test_training_curves_plot_loss_and_validation_ndcg_for_cf_and_language_model():
    fig = training_curves_figure({"lightgcn.training_history": _history("valid_NDCG@20"),
                                  "llm4rec_training_history": _history("valid_NDCG@20", 2)})
    assert "NDCG@20" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis.title.text and fig.layout.yaxis2.title.text
    assert [t.name for t in fig.data if t.showlegend is not False] == ["lightgcn", "llm4rec"]
    ndcg = {t.name: list(t.y) for t in fig.data if t.xaxis == "x2"}
    assert ndcg["llm4rec"] == pytest.approx([0.1, 0.2])
    assert len(ndcg["lightgcn"]) == 4


def test_training_curves_name_the_table_that_is_empty_or_lacks_the_metric():
    with pytest.raises(MissingTableError, match="mf.training_history"):
        training_curves_figure({"lightgcn.training_history": _history("valid_NDCG@20"),
                                "mf.training_history": _history("valid_NDCG@20").iloc[:0]})
    with pytest.raises(MissingTableError, match="llm4rec_training_history.*NDCG@20"):
        training_curves_figure({"llm4rec_training_history": _history("valid_HR@20")})
    with pytest.raises(MissingTableError):
        training_curves_figure({})


def test_training_curves_node_leaves_out_a_switched_off_cf_model_only():
    """baselines.enabled without mf: MF was not trained (empty history), so it has no curve and no error;
    a model that was trained (in the list, or the tokenizers' cf_pretraining.model) must have its history."""
    empty = _history("valid_NDCG@20").iloc[:0]
    reporting = {"curve_metric": "NDCG@20"}
    fig = plot_training_curves(_history("valid_NDCG@20"), empty, _history("valid_NDCG@20", 2), ["pop", "lightgcn"],
                               "lightgcn", reporting)
    assert [t.name for t in fig.data if t.showlegend is not False] == ["lightgcn", "llm4rec"]
    # LightGCN off the list but feeding the tokenizers: still trained, still drawn.
    fig = plot_training_curves(_history("valid_NDCG@20"), empty, _history("valid_NDCG@20", 2), ["pop"], "lightgcn",
                               reporting)
    assert [t.name for t in fig.data if t.showlegend is not False] == ["lightgcn", "llm4rec"]
    with pytest.raises(MissingTableError, match="mf.training_history"):
        plot_training_curves(_history("valid_NDCG@20"), empty, _history("valid_NDCG@20", 2), ["pop", "lightgcn", "mf"],
                             "lightgcn", reporting)


def test_pca_2d_finds_the_directions_of_largest_variance():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    coords, explained = pca_2d(vectors)
    assert coords.shape == (200, 2)
    assert explained[0] > explained[1] > 0.1 and explained.sum() > 0.98
    assert abs(np.corrcoef(coords[:, 0], vectors[:, 0])[0, 1]) > 0.99


def _tokens(first: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"id": range(len(first)), "token_1": first, "token_2": 0,
                         "tokens": [f"<i1-{t}><i2-0>" for t in first]})


def test_projection_by_first_token_labels_the_most_common_tokens_and_greys_the_rest():
    vectors = np.random.default_rng(1).normal(size=(9, 4))
    fig = item_projection_by_first_token(vectors, _tokens([3, 3, 3, 3, 5, 5, 5, 7, 8]), max_legend=2)
    ax = fig.axes[0]
    assert ax.get_title() and "PC1" in ax.get_xlabel() and "% of variance" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["other first tokens (2)", "<i1-3> (4 items)", "<i1-5> (3 items)"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 9  # every item drawn once
    plt.close(fig)


def test_projection_by_first_token_names_the_token_table_when_items_lack_tokens():
    with pytest.raises(MissingTableError, match=r"item.tokens.*\[3, 4\]"):
        item_projection_by_first_token(np.zeros((5, 4)), _tokens([1, 2, 3]))
    with pytest.raises(MissingTableError, match="item.tokens"):
        item_projection_by_first_token(np.zeros((5, 4)), _tokens([]))


def test_projection_by_popularity_node_colours_items_by_training_count_with_a_colour_bar():
    cf_embeddings = {"item_embeddings": torch.randn(6, 4, generator=torch.Generator().manual_seed(0))}
    item_map = pd.DataFrame({"item_id": [5, 4, 3, 2, 1, 0], "train_count": [60, 50, 40, 30, 20, 10]})
    fig = plot_items_by_popularity(cf_embeddings, item_map)
    ax, colour_bar = fig.axes
    assert "popularity" in ax.get_title() and "interactions" in colour_bar.get_ylabel()
    assert sorted(ax.collections[0].get_array()) == [10, 20, 30, 40, 50, 60]
    plt.close(fig)
    with pytest.raises(MissingTableError, match=r"item_map.*train_count"):
        plot_items_by_popularity(cf_embeddings, item_map.drop(columns="train_count"))
    with pytest.raises(MissingTableError, match="item_embeddings"):
        plot_items_by_popularity({}, item_map)
    with pytest.raises(ValueError, match="item_map"):
        item_projection_by_popularity(np.zeros((3, 4)), np.ones(2))


def test_figure_datasets_save_atomically_and_preview(tmp_path):
    from tokenrec_pipeline.io.datasets import AtomicMatplotlibDataset, AtomicPlotlyJSONDataset

    plotly_file, png_file = tmp_path / "figures" / "metrics.json", tmp_path / "figures" / "items.png"
    AtomicPlotlyJSONDataset(filepath=str(plotly_file)).save(metrics_by_model_figure(_metrics_table()))
    reloaded = AtomicPlotlyJSONDataset(filepath=str(plotly_file))
    assert [t.name for t in reloaded.load().data][:4] == ["pop", "lightgcn", "tokenrec", "sasrec"]
    assert reloaded.preview()["layout"]["title"]["text"].startswith("Test HR and NDCG")  # what kedro viz shows

    fig = item_projection_by_popularity(np.random.default_rng(0).normal(size=(5, 3)), np.arange(1, 6))
    AtomicMatplotlibDataset(filepath=str(png_file)).save(fig)
    assert png_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png_file.parent.iterdir()) == ["items.png", "metrics.json"]  # no temp file left
