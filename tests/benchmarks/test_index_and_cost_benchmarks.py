"""Small-size checks of the item-index and cost-curve benchmark functions (the figures come from running them)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.cost_curves import growth_exponent, run_worker, summarise
from benchmarks.item_index import ClusteredMixture, best_option, parse_option, recall_at_k, run


def test_recall_counts_shared_ids_per_query() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(approx, exact) == pytest.approx((2 / 4 + 1) / 2)


def test_mixture_is_clustered_and_queries_share_its_clusters() -> None:
    mixture = ClusteredMixture(dim=16, n_clusters=20, subspace=4, seed=0)
    items = mixture.sample(2_000, np.random.default_rng(1))
    queries = mixture.sample(50, np.random.default_rng(2))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nearest_centre = (unit(queries) @ mixture.centres.T).max(axis=1)
    nearest_item = (unit(queries) @ unit(items).T).max(axis=1)
    assert items.shape == (2_000, 16) and items.dtype == np.float32
    assert nearest_centre.mean() > 0.8 and nearest_item.mean() > 0.9  # queries land inside item clusters


def test_index_benchmark_rows_exact_reference_and_approximate_options() -> None:
    mixture = ClusteredMixture(dim=16, n_clusters=20, subspace=4, seed=0)
    items, queries = mixture.sample(3_000, np.random.default_rng(1)), mixture.sample(200, np.random.default_rng(2))
    options = [parse_option("Flat"), parse_option("IVF32,Flat:nprobe=1/32"), parse_option("HNSW16:efSearch=64")]
    table = run(items, queries, options, batch=100, n_single=5, log=lambda *a, **k: None)
    assert list(table["search"]) == ["exact", "nprobe=1", "nprobe=32", "efSearch=64"]
    assert table.loc[0, "recall@20"] == 1.0
    assert table.loc[2, "recall@20"] == 1.0  # all 32 lists probed: exact
    assert table.loc[1, "recall@20"] < table.loc[2, "recall@20"]
    assert (table["memory_MB"] > 3_000 * 16 * 4 / 2**20).all()  # at least the raw vectors
    assert best_option(table) is not None
    with pytest.raises(ValueError, match="Flat"):
        run(items, queries, options[1:], log=lambda *a, **k: None)


def test_growth_exponent_recovers_power_laws() -> None:
    sizes = [1e5, 3e5, 1e6]
    assert growth_exponent(sizes, [2 * s for s in sizes]) == pytest.approx(1.0)
    assert growth_exponent(sizes, [s**2 / 1e9 for s in sizes]) == pytest.approx(2.0)
    assert np.isnan(growth_exponent([1e5], [1.0]))


def test_worker_times_a_stage_and_summary_fits_exponents(monkeypatch) -> None:
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])  # conf/base of the project
    records = [run_worker("index_query", size, threads=1) for size in (3_000, 6_000)]
    for record in records:
        assert record["items"] > 0 and record["ms_per_query"] > 0 and record["peak_rss_mb"] > 0
    records.append({"stage": "index_query", "target": 9_000, "error": "timeout > 1s"})
    table = summarise(records)
    assert table.loc[0, "unit"] == "ms/query" and table.loc[0, "0.009M"] == "timeout > 1s"
    assert np.isfinite(table.loc[0, "time exponent"])
