"""Tests for the faiss item index: exact cosine top-K, history exclusion, new items, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from tokenrec_pipeline.models.item_index import (
    MISSING_ID,
    add_items,
    build_item_index,
    load_item_index,
    save_item_index,
    search,
)

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
