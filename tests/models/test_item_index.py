"""Tests for the faiss item index: exact cosine top-K, history exclusion, new items, persistence, and the
Flat / IVF / HNSW options of ``indexing.faiss_factory``."""

from __future__ import annotations

import numpy as np
import pytest

from tokenrec_pipeline.evaluation.item_index import (
    MISSING_ID,
    add_items,
    build_item_index,
    load_item_index,
    save_item_index,
    search,
    set_search_params,
)
from tokenrec_pipeline.io.datasets import FaissIndexDataset
from tokenrec_pipeline.models.tokenrec import item_vectors_from_index
from tokenrec_pipeline.pipelines.indexing.nodes import build_index

N_ITEMS, DIM = 200, 16


@pytest.fixture()
def items() -> tuple[np.ndarray, np.ndarray]:
    """Random item vectors (unnormalised, as they come from LightGCN) and non-contiguous ids."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(N_ITEMS, 1))
    ids = rng.permutation(10_000)[:N_ITEMS].astype(np.int64)
    return vectors, ids


def brute_force_top_k(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, exclude: list[list[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full cosine matrix in numpy, excluded items set to -inf, argsort."""
    unit_items = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = unit_queries @ unit_items.T  # (q, n)
    if exclude is not None:
        position = {int(item): row for row, item in enumerate(ids)}
        for query, excluded in enumerate(exclude):
            scores[query, [position[i] for i in excluded if i in position]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def test_search_equals_brute_force_cosine(items: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = items
    queries = np.random.default_rng(1).normal(size=(25, DIM)).astype(np.float32)
    index = build_item_index(vectors, ids, use_gpu=False)
    got_ids, got_scores = search(index, queries, k=20)
    want_ids, want_scores = brute_force_top_k(vectors, ids, queries, k=20)
    assert got_ids.shape == (25, 20) and got_ids.dtype == np.int64
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_default_ids_are_row_numbers_and_torch_input_accepted(items: tuple[np.ndarray, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    vectors, _ = items
    index = build_item_index(torch.from_numpy(vectors), use_gpu=False)
    np.testing.assert_array_equal(index.ids(), np.arange(N_ITEMS))
    got_ids, _ = search(index, torch.from_numpy(vectors[:5]), k=1)
    np.testing.assert_array_equal(got_ids[:, 0], np.arange(5))  # each item is its own nearest neighbour


def test_exclusion_removes_history_and_keeps_k(items: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = items
    queries = np.random.default_rng(2).normal(size=(6, DIM)).astype(np.float32)
    index = build_item_index(vectors, ids, use_gpu=False)
    plain_ids, _ = search(index, queries, k=10)
    # Exclude each query's own top-7 (worst case: the history dominates the ranking) plus varying extras.
    exclude = [plain_ids[q, :7].tolist() + ids[q : q + q].tolist() for q in range(6)]
    exclude[0] = []  # a query with no history must still work beside others that have one
    got_ids, got_scores = search(index, queries, k=10, exclude=exclude)
    want_ids, want_scores = brute_force_top_k(vectors, ids, queries, k=10, exclude=exclude)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    for q in range(6):
        assert not set(got_ids[q].tolist()) & set(exclude[q])
        assert (got_ids[q] != MISSING_ID).all()


def test_small_catalogue_pads_with_missing(items: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = items
    index = build_item_index(vectors[:5], ids[:5], use_gpu=False)
    got_ids, got_scores = search(index, vectors[:1], k=8, exclude=[[int(ids[0])]])
    assert sorted(got_ids[0, :4].tolist()) == sorted(ids[1:5].tolist())
    assert (got_ids[0, 4:] == MISSING_ID).all() and np.isneginf(got_scores[0, 4:]).all()


def test_added_item_is_returned_at_once(items: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, ids = items
    index = build_item_index(vectors, ids, use_gpu=False)
    new_vector = np.random.default_rng(3).normal(size=(1, DIM)).astype(np.float32)
    add_items(index, new_vector, [123_456])
    got_ids, got_scores = search(index, new_vector * 5.0, k=3)  # scaling must not matter: cosine
    assert got_ids[0, 0] == 123_456 and got_scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert index.ntotal == N_ITEMS + 1
    with pytest.raises(ValueError, match="already in the index"):
        add_items(index, new_vector, [123_456])
    # replace=True overwrites the vector of an existing id instead of duplicating it.
    add_items(index, -new_vector, [123_456], replace=True)
    assert index.ntotal == N_ITEMS + 1
    got_ids, _ = search(index, -new_vector, k=1)
    assert got_ids[0, 0] == 123_456


def test_save_load_round_trip_preserves_ids_and_results(items: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    vectors, ids = items
    index = build_item_index(vectors, ids, use_gpu=False)
    add_items(index, vectors[:2] + 1.0, [50_001, 50_002])
    path = tmp_path / "nested" / "items.faiss"
    save_item_index(index, path)
    save_item_index(index, path)  # overwriting an existing file goes through the same atomic rename
    assert [p.name for p in path.parent.iterdir()] == ["items.faiss"]  # no temp files left behind
    loaded = load_item_index(path, use_gpu=False)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    queries = np.random.default_rng(4).normal(size=(7, DIM)).astype(np.float32)
    for before, after in zip(search(index, queries, k=15), search(loaded, queries, k=15), strict=True):
        np.testing.assert_array_equal(before, after)


def test_invalid_inputs_are_explained(items: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    vectors, ids = items
    with pytest.raises(ValueError, match="unique"):
        build_item_index(vectors[:3], [1, 1, 2], use_gpu=False)
    with pytest.raises(ValueError, match="one id per vector"):
        build_item_index(vectors[:3], [1, 2], use_gpu=False)
    index = build_item_index(vectors, ids, use_gpu=False)
    with pytest.raises(ValueError, match="dim"):
        search(index, np.ones((1, DIM + 1), dtype=np.float32), k=3)
    with pytest.raises(ValueError, match="one list per query"):
        search(index, vectors[:2], k=3, exclude=[[1]])
    with pytest.raises(FileNotFoundError, match="indexing pipeline"):
        load_item_index(tmp_path / "missing.faiss", use_gpu=False)


# ----------------------------------------------------------------------------- index kinds (indexing.faiss_factory)

N_CLUSTERS, PER_CLUSTER = 8, 40
# Each option with search parameters under which a well-separated catalogue must give the exact top-k.
OPTIONS = [("Flat", {}), ("IVF8,Flat", {"nprobe": 3}), ("HNSW16", {"efSearch": 64})]


@pytest.fixture()
def separated() -> tuple[np.ndarray, np.ndarray]:
    """Eight tight clusters around orthogonal directions (cosine between clusters ~0, within ~0.99), so the
    true top-k of a query near a centre lies in one cluster and an approximate index has no excuse to miss it."""
    rng = np.random.default_rng(7)
    centres = np.eye(DIM, dtype=np.float32)[:N_CLUSTERS] * 3.0
    vectors = np.repeat(centres, PER_CLUSTER, axis=0) + rng.normal(scale=0.1, size=(N_CLUSTERS * PER_CLUSTER, DIM))
    ids = rng.permutation(100_000)[: len(vectors)].astype(np.int64)
    return vectors.astype(np.float32), ids


def _queries_near_centres(n_per_cluster: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.repeat(np.eye(DIM, dtype=np.float32)[:N_CLUSTERS], n_per_cluster, axis=0)
    return (centres + rng.normal(scale=0.05, size=centres.shape)).astype(np.float32)


@pytest.mark.parametrize(("factory", "params"), OPTIONS)
def test_every_option_returns_exact_top_k_on_separated_items(separated, factory, params) -> None:
    vectors, ids = separated
    index = build_item_index(vectors, ids, use_gpu=False, factory=factory, search_params=params)
    assert index.factory == factory and index.ntotal == len(ids)
    queries = _queries_near_centres(3, seed=8)
    got_ids, got_scores = search(index, queries, k=10)
    want_ids, want_scores = brute_force_top_k(vectors, ids, queries, k=10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    # History exclusion works the same through approximate indexes.
    exclude = [want_ids[q, :4].tolist() for q in range(len(queries))]
    got_ids, _ = search(index, queries, k=10, exclude=exclude)
    np.testing.assert_array_equal(got_ids, brute_force_top_k(vectors, ids, queries, k=10, exclude=exclude)[0])


def test_ivf_with_few_probes_is_approximate_and_nprobe_matters() -> None:
    """On structureless data an IVF index scanning 1 of 16 lists misses true neighbours; scanning all is exact."""
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(2_000, DIM)).astype(np.float32)
    queries = rng.normal(size=(50, DIM)).astype(np.float32)
    want_ids, _ = brute_force_top_k(vectors, np.arange(2_000), queries, k=10)
    index = build_item_index(vectors, use_gpu=False, factory="IVF16,Flat", search_params={"nprobe": 1})
    one_list = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(search(index, queries, k=10)[0], want_ids, strict=True)]
    )
    set_search_params(index, {"nprobe": 16})
    np.testing.assert_array_equal(search(index, queries, k=10)[0], want_ids)
    assert one_list < 0.9


@pytest.mark.parametrize(("factory", "params"), OPTIONS)
def test_adding_items_works_for_every_option(separated, factory, params) -> None:
    vectors, ids = separated
    index = build_item_index(vectors, ids, use_gpu=False, factory=factory, search_params=params)
    # Two new items along an unused direction: they must come back first for a query pointing there.
    new_vectors = np.zeros((2, DIM), dtype=np.float32)
    new_vectors[:, N_CLUSTERS] = 1.0
    new_vectors[1, N_CLUSTERS + 1] = 0.5
    add_items(index, new_vectors, [900_001, 900_002])
    assert index.ntotal == len(ids) + 2 and set(index.ids()[-2:].tolist()) == {900_001, 900_002}
    got_ids, got_scores = search(index, new_vectors[:1] * 4.0, k=3)
    assert got_ids[0, :2].tolist() == [900_001, 900_002] and got_scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    # Old items are still found exactly.
    queries = _queries_near_centres(2, seed=10)
    all_vectors, all_ids = np.vstack([vectors, new_vectors]), np.concatenate([ids, [900_001, 900_002]])
    np.testing.assert_array_equal(
        search(index, queries, k=10)[0], brute_force_top_k(all_vectors, all_ids, queries, 10)[0]
    )


@pytest.mark.parametrize(("factory", "params"), OPTIONS[:2])
def test_replace_overwrites_vectors_in_flat_and_ivf(separated, factory, params) -> None:
    vectors, ids = separated
    index = build_item_index(vectors, ids, use_gpu=False, factory=factory, search_params=params)
    moved = int(ids[0])  # an item of cluster 0 moves to cluster 5
    target = np.eye(DIM, dtype=np.float32)[5:6] * 2.0
    add_items(index, target, [moved], replace=True)
    assert index.ntotal == len(ids) and np.sort(index.ids()).tolist() == np.sort(ids).tolist()
    changed = vectors.copy()
    changed[0] = target[0]
    queries = _queries_near_centres(2, seed=11)
    np.testing.assert_array_equal(search(index, queries, k=10)[0], brute_force_top_k(changed, ids, queries, 10)[0])
    assert search(index, target, k=1)[0][0, 0] == moved


def test_hnsw_refuses_replace_with_a_clear_error_and_stays_intact(separated) -> None:
    vectors, ids = separated
    index = build_item_index(vectors, ids, use_gpu=False, factory="HNSW16", search_params={"efSearch": 64})
    before = search(index, vectors[:5], k=5)
    with pytest.raises(ValueError, match=r"HNSW.*cannot remove.*indexing"):
        add_items(index, vectors[:1] * -1.0, [int(ids[0])], replace=True)
    assert index.ntotal == len(ids)
    np.testing.assert_array_equal(search(index, vectors[:5], k=5)[0], before[0])


@pytest.mark.parametrize(("factory", "params"), OPTIONS)
def test_save_load_round_trips_factory_and_search_params(separated, tmp_path, factory, params) -> None:
    vectors, ids = separated
    index = build_item_index(vectors, ids, use_gpu=False, factory=factory, search_params=params)
    add_items(index, vectors[:1] + 0.5, [777_777])
    path = tmp_path / "index.faiss"
    save_item_index(index, path)
    loaded = load_item_index(path, use_gpu=False)
    assert loaded.factory == factory
    assert loaded.search_params == params
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    queries = _queries_near_centres(2, seed=12)
    for before, after in zip(search(index, queries, k=10), search(loaded, queries, k=10), strict=True):
        np.testing.assert_array_equal(before, after)
    # The catalog dataset keeps them too, and can override the search parameters at load time.
    dataset = FaissIndexDataset(str(tmp_path / "via_catalog.faiss"), use_gpu=False)
    dataset.save(loaded)
    assert dataset.load().search_params == params
    override = {"nprobe": 8} if "nprobe" in params else {"efSearch": 200} if "efSearch" in params else {}
    reloaded = FaissIndexDataset(str(tmp_path / "via_catalog.faiss"), use_gpu=False, search_params=override).load()
    assert reloaded.factory == factory and reloaded.search_params == override


@pytest.mark.parametrize(("factory", "params"), OPTIONS)
def test_item_vectors_read_back_from_every_option(separated, factory, params) -> None:
    """Evaluation reads the served vectors back out of the index (row j = item id j)."""
    vectors, _ = separated
    index = build_item_index(vectors, use_gpu=False, factory=factory, search_params=params)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(item_vectors_from_index(index, len(vectors)).numpy(), unit, atol=1e-6)


def test_bad_factory_and_search_params_name_the_parameter(separated) -> None:
    vectors, ids = separated
    with pytest.raises(ValueError, match=r"indexing\.faiss_factory='IVFx'.*Flat"):
        build_item_index(vectors, ids, use_gpu=False, factory="IVFx")
    with pytest.raises(ValueError, match=r"indexing\.faiss_factory"):
        build_item_index(vectors, ids, use_gpu=False, factory="")
    with pytest.raises(
        ValueError, match=r"indexing\.faiss_factory='IVF1024,Flat' trains 1024 .* only 320 item vectors"
    ):
        build_item_index(vectors, ids, use_gpu=False, factory="IVF1024,Flat")
    with pytest.raises(ValueError, match=r"indexing\.search_params\.nprob"):
        build_item_index(vectors, ids, use_gpu=False, factory="IVF8,Flat", search_params={"nprob": 4})
    with pytest.raises(ValueError, match=r"indexing\.search_params\.efSearch must be a positive integer"):
        build_item_index(vectors, ids, use_gpu=False, factory="HNSW16", search_params={"efSearch": 0})


def test_indexing_node_reads_factory_params_and_seed(separated) -> None:
    torch = pytest.importorskip("torch")
    vectors, _ = separated
    params = {"use_gpu": False, "faiss_factory": "IVF8,Flat", "search_params": {"nprobe": 4, "efSearch": 99}}
    from tokenrec_pipeline.models.item_space import items_to_space

    class CosineSpace:  # the one method of LLM4Rec the node reads: its item space (here the paper's cosine)
        @staticmethod
        def items_in_space(item_vectors):
            return items_to_space(item_vectors, "cosine")

    first = build_index({"item_embeddings": torch.from_numpy(vectors)}, CosineSpace(), params, seed=3)
    second = build_index({"item_embeddings": torch.from_numpy(vectors)}, CosineSpace(), params, seed=3)
    assert first.factory == "IVF8,Flat" and first.search_params == {"nprobe": 4}  # efSearch ignored for IVF
    np.testing.assert_array_equal(first.ids(), np.arange(len(vectors)))
    queries = _queries_near_centres(2, seed=13)
    np.testing.assert_array_equal(search(first, queries, k=10)[0], search(second, queries, k=10)[0])
