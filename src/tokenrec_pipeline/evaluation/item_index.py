"""Vector index over item collaborative embeddings for TokenRec's top-K retrieval.

TokenRec scores every item by ``cos(z_u, q_j)`` (paper, "Generative Retrieval", step 4). With
L2-normalised vectors the inner product *is* the cosine, so every index here uses faiss' inner-product
metric over normalised vectors. The kind of index is a faiss ``index_factory`` string
(parameter ``indexing.faiss_factory``):

* ``Flat`` (default) — exact: the same ranking as a brute-force cosine over the whole catalogue.
* ``IVF<nlist>,Flat`` (e.g. ``IVF1024,Flat``) — approximate: k-means splits the catalogue into ``nlist``
  lists (trained here on the item vectors themselves) and a query scans the ``nprobe`` closest lists.
* ``HNSW<M>`` (e.g. ``HNSW32``) — approximate: a navigable small-world graph searched with a candidate
  list of ``efSearch`` nodes. Needs no training; faiss' HNSW cannot delete vectors.

Any other factory string faiss accepts (``IVF4096,PQ16``, ``HNSW32,SQ8`` …) also works, without the
exactness guarantee of ``Flat``. Search parameters (``nprobe``, ``efSearch``) live on the faiss index, so
``faiss.write_index`` saves them with it. Every index is wrapped in an ``IndexIDMap2`` so that the
project's item ids (not faiss' row numbers) come back from a search, and so that new items can be
appended with their own ids without re-training anything (paper: new items are served by "updating the
external vector database").

The CPU index is always the source of truth (it is what gets saved). When requested and available, a
GPU mirror answers the searches (Flat and IVF; faiss has no GPU HNSW); it is kept in sync on every add
and rebuilt after a removal or a change of search parameters.

Shapes: ``n`` items, ``q`` queries, ``d`` embedding dimension, ``k`` results per query.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tokenrec_pipeline.core.folders import atomic_file

logger = logging.getLogger(__name__)

# Returned for slots that cannot be filled because the catalogue (minus excluded items) has fewer than
# k items. faiss itself uses -1 for "no result"; the score is -inf so that such a slot never outranks a
# real item when callers merge or threshold scores.
MISSING_ID: int = -1
MISSING_SCORE: float = float("-inf")


def _as_float32_matrix(vectors: Any, name: str) -> np.ndarray:
    """Convert a torch tensor / array-like to a C-contiguous float32 (rows, d) matrix (faiss needs it)."""
    if hasattr(vectors, "detach"):  # torch.Tensor without importing torch here
        vectors = vectors.detach().to("cpu").float().numpy()
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) matrix, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; check the embeddings that produced it.")
    return array


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (copy); an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _as_int64_ids(ids: Any, expected: int) -> np.ndarray:
    """Convert ids to a contiguous int64 vector and check it matches the number of vectors."""
    if hasattr(ids, "detach"):
        ids = ids.detach().to("cpu").numpy()
    array = np.ascontiguousarray(np.asarray(ids).reshape(-1).astype(np.int64))
    if array.shape[0] != expected:
        raise ValueError(f"Got {array.shape[0]} ids for {expected} vectors; pass exactly one id per vector.")
    if np.unique(array).shape[0] != array.shape[0]:
        raise ValueError("Item ids must be unique; the same id appears more than once.")
    if np.any(array < 0):
        # -1 is faiss' "no result" marker; a negative id would be indistinguishable from it.
        raise ValueError("Item ids must be non-negative integers.")
    return array


DEFAULT_FACTORY: str = "Flat"
# Named in every error about a bad factory or search parameter, so the user knows what to change.
FACTORY_PARAMETER: str = "indexing.faiss_factory"
SEARCH_PARAMETER: str = "indexing.search_params"
SEARCH_PARAMETER_NAMES: tuple[str, ...] = ("nprobe", "efSearch")


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus is not None and hasattr(faiss, "StandardGpuResources") and get_num_gpus() > 0)


def _inner(cpu_index: faiss.IndexIDMap2) -> faiss.Index:
    """The index under the id map, as its most derived Python class."""
    return faiss.downcast_index(cpu_index.index)


def _ivf_of(cpu_index: faiss.IndexIDMap2) -> Any:
    """The ``IndexIVF`` under the id map, or None for non-IVF indexes."""
    return faiss.try_extract_index_ivf(cpu_index.index)


def _hnsw_of(cpu_index: faiss.IndexIDMap2) -> Any:
    """The HNSW graph structure under the id map, or None for non-HNSW indexes."""
    return getattr(_inner(cpu_index), "hnsw", None)


def describe_factory(cpu_index: faiss.IndexIDMap2) -> str:
    """The faiss factory string of the index under the id map (canonical form, e.g. ``IVF1024,Flat``)."""
    from faiss.contrib.factory_tools import reverse_index_factory

    inner = _inner(cpu_index)
    try:
        return str(reverse_index_factory(inner))
    except NotImplementedError:  # exotic index types the reverse mapping does not know
        return type(inner).__name__


@dataclass
class ItemIndex:
    """A cosine index over items, keyed by the project's item ids.

    Attributes:
        cpu_index: ``faiss.IndexIDMap2`` over the index built from ``indexing.faiss_factory`` (inner-product
            metric) holding L2-normalised item vectors.
        dim: Embedding dimension ``d``.
        use_gpu: Whether searches run on a GPU mirror of ``cpu_index``.
    """

    cpu_index: faiss.IndexIDMap2
    dim: int
    use_gpu: bool = False
    _gpu_index: Any = field(default=None, repr=False)
    _gpu_resources: Any = field(default=None, repr=False)  # must outlive the GPU index

    @property
    def ntotal(self) -> int:
        """Number of items in the index."""
        return int(self.cpu_index.ntotal)

    @property
    def factory(self) -> str:
        """The faiss factory string this index was built from (``Flat``, ``IVF1024,Flat``, ``HNSW32`` …)."""
        return describe_factory(self.cpu_index)

    @property
    def search_params(self) -> dict[str, int]:
        """The search parameters in force: ``{"nprobe": …}`` for IVF, ``{"efSearch": …}`` for HNSW, else empty."""
        ivf, hnsw = _ivf_of(self.cpu_index), _hnsw_of(self.cpu_index)
        if ivf is not None:
            return {"nprobe": int(ivf.nprobe)}
        if hnsw is not None:
            return {"efSearch": int(hnsw.efSearch)}
        return {}

    def ids(self) -> np.ndarray:
        """All item ids in insertion order, shape (n,), int64."""
        return faiss.vector_to_array(self.cpu_index.id_map).astype(np.int64)

    def _search_index(self) -> faiss.Index:
        """The index to search: the GPU mirror when enabled (built on first use), else the CPU index."""
        if not self.use_gpu:
            return self.cpu_index
        if self._gpu_index is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            # index_cpu_to_gpu clones the IDMap wrapper and moves the sub-index (with its nprobe) to the device.
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu_index)
        return self._gpu_index


def _resolve_use_gpu(use_gpu: bool | str, cpu_index: faiss.IndexIDMap2) -> bool:
    """Turn the ``use_gpu`` parameter ("auto", True, False) into a decision, explaining impossible asks."""
    gpu_kind = _hnsw_of(cpu_index) is None  # faiss has GPU Flat and IVF indexes, no GPU HNSW
    if use_gpu == "auto":
        return faiss_gpu_available() and gpu_kind
    if isinstance(use_gpu, str):
        raise ValueError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}.")
    if use_gpu and not faiss_gpu_available():
        raise RuntimeError(
            "use_gpu=True but this faiss build has no GPU support or sees no GPU. Install the `gpu` extra "
            "(faiss-gpu) on a CUDA machine, or set the indexing parameter use_gpu to 'auto' or false."
        )
    if use_gpu and not gpu_kind:
        raise RuntimeError(
            f"use_gpu=True but faiss has no GPU version of the {describe_factory(cpu_index)!r} index. Pick a Flat "
            f"or IVF factory ({FACTORY_PARAMETER}), or set use_gpu to 'auto' (HNSW then searches on the CPU)."
        )
    return bool(use_gpu)


def _new_cpu_index(factory: str, dim: int) -> faiss.IndexIDMap2:
    """An empty inner-product index from a faiss factory string, under an id map."""
    if not isinstance(factory, str) or not factory.strip():
        raise ValueError(
            f"{FACTORY_PARAMETER} must be a faiss index_factory string such as 'Flat', 'IVF1024,Flat' or 'HNSW32', "
            f"got {factory!r}."
        )
    spec = factory.strip()
    if spec.upper().startswith("IDMAP"):
        raise ValueError(f"{FACTORY_PARAMETER}={factory!r}: leave out the IDMap prefix, item ids are always mapped.")
    try:
        return faiss.index_factory(dim, f"IDMap2,{spec}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().rsplit(": ", 1)[-1]  # faiss prefixes the C++ location
        raise ValueError(
            f"{FACTORY_PARAMETER}={factory!r} is not an index faiss can build ({reason}). Use 'Flat' (exact), "
            "'IVF<nlist>,Flat' (e.g. 'IVF1024,Flat') or 'HNSW<M>' (e.g. 'HNSW32')."
        ) from err


def _train(cpu_index: faiss.IndexIDMap2, vectors: np.ndarray, factory: str, seed: int) -> None:
    """Train the index on the item vectors themselves (IVF: k-means into nlist lists); no-op for Flat and HNSW."""
    if cpu_index.is_trained:
        return
    n_vectors = vectors.shape[0]
    ivf = _ivf_of(cpu_index)
    if ivf is not None:
        if n_vectors < ivf.nlist:
            suggestion = max(1, min(n_vectors, int(4 * np.sqrt(n_vectors))))
            raise ValueError(
                f"{FACTORY_PARAMETER}={factory!r} trains {ivf.nlist} inverted lists but there are only {n_vectors} "
                f"item vectors; use fewer lists than vectors (about 4*sqrt(n), e.g. 'IVF{suggestion},Flat') "
                "or 'Flat' for a catalogue this small."
            )
        ivf.cp.seed = seed
    try:
        cpu_index.train(vectors)
    except RuntimeError as err:
        reason = str(err).strip().rsplit(": ", 1)[-1]
        raise ValueError(
            f"Training the {factory!r} index ({FACTORY_PARAMETER}) on {n_vectors} item vectors failed: {reason}"
        ) from err


def set_search_params(index: ItemIndex, search_params: dict[str, Any] | None) -> ItemIndex:
    """Set ``nprobe`` (IVF) and/or ``efSearch`` (HNSW) on the index; keys for other index kinds are ignored.

    The values are stored on the faiss index itself, so :func:`save_item_index` keeps them.

    Raises:
        ValueError: An unknown key or a value that is not a positive integer (named as
            ``indexing.search_params.<key>``).
    """
    params = dict(search_params or {})
    for name, value in params.items():
        if name not in SEARCH_PARAMETER_NAMES:
            raise ValueError(
                f"Unknown search parameter {SEARCH_PARAMETER}.{name}; known: {', '.join(SEARCH_PARAMETER_NAMES)}."
            )
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{SEARCH_PARAMETER}.{name} must be a positive integer, got {value!r}.")
    ivf, hnsw = _ivf_of(index.cpu_index), _hnsw_of(index.cpu_index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
    if hnsw is not None and "efSearch" in params:
        hnsw.efSearch = int(params["efSearch"])
    index._gpu_index = None  # the GPU mirror copied the old values: rebuild it on next search
    return index


def build_item_index(
    item_vectors: Any,
    item_ids: Any | None = None,
    use_gpu: bool | str = "auto",
    factory: str = DEFAULT_FACTORY,
    search_params: dict[str, Any] | None = None,
    seed: int = 1234,
) -> ItemIndex:
    """Build a cosine (inner product over normalised vectors) index of the kind ``factory`` names.

    Args:
        item_vectors: (n, d) item embeddings (numpy array or torch tensor); normalised here.
        item_ids: (n,) non-negative unique ids; defaults to ``0..n-1`` (row order).
        use_gpu: "auto" (GPU when faiss has GPU support, sees a GPU and has the index kind), True, or False.
        factory: faiss ``index_factory`` string: ``Flat`` (exact), ``IVF<nlist>,Flat``, ``HNSW<M>`` …
        search_params: ``{"nprobe": …, "efSearch": …}``; each applies to its index kind only.
        seed: Seed of the IVF k-means (the only random step of building).

    Returns:
        The :class:`ItemIndex`.

    Raises:
        ValueError: A factory string faiss cannot build, or fewer vectors than IVF lists (both name
            ``indexing.faiss_factory``).
    """
    vectors = _l2_normalise(_as_float32_matrix(item_vectors, "item_vectors"))
    n_items, dim = vectors.shape
    ids = np.arange(n_items, dtype=np.int64) if item_ids is None else _as_int64_ids(item_ids, n_items)
    cpu_index = _new_cpu_index(factory, dim)
    _train(cpu_index, vectors, factory, seed)
    ivf = _ivf_of(cpu_index)
    if ivf is not None:
        # Lets the IVF lists give vectors back by position: evaluation reads item vectors out of the index,
        # and replacing items rebuilds the lists from them. Costs 8 bytes per item.
        ivf.make_direct_map()
    cpu_index.add_with_ids(vectors, ids)
    index = ItemIndex(cpu_index=cpu_index, dim=dim, use_gpu=_resolve_use_gpu(use_gpu, cpu_index))
    set_search_params(index, search_params)
    logger.info(
        "Built item index %s %s: %d items, dim %d, %s.",
        index.factory, index.search_params or "", n_items, dim, "GPU" if index.use_gpu else "CPU",
    )
    return index


def _remove(index: ItemIndex, ids: np.ndarray) -> None:
    """Remove ``ids`` from the index (every id must be present)."""
    if _hnsw_of(index.cpu_index) is not None:
        raise ValueError(
            f"The {index.factory!r} index cannot overwrite items {ids[:10].tolist()}: faiss' HNSW graph cannot remove "
            "vectors. Rebuild the index (kedro run --pipeline=indexing) with the new vectors, give changed items new "
            f"ids, or use a Flat or IVF factory ({FACTORY_PARAMETER})."
        )
    if _ivf_of(index.cpu_index) is None:
        index.cpu_index.remove_ids(ids)  # flat storage compacts in step with the id map
    else:
        # The IVF direct map cannot remove entries, and the id map's compaction would not match the IVF's own
        # positions: refill the (still trained) lists with the vectors that stay. O(n), no re-training.
        all_ids = index.ids()
        keep = ~np.isin(all_ids, ids)
        kept_vectors = _inner(index.cpu_index).reconstruct_n(0, index.ntotal)[keep]
        index.cpu_index.reset()
        index.cpu_index.add_with_ids(np.ascontiguousarray(kept_vectors), np.ascontiguousarray(all_ids[keep]))
        index.cpu_index.construct_rev_map()  # reset() leaves stale id -> position entries behind
    index._gpu_index = None  # GPU indexes cannot remove ids: rebuild the mirror on next search


def add_items(index: ItemIndex, vectors: Any, ids: Any, replace: bool = False) -> ItemIndex:
    """Add new items; they are retrievable by the very next search. Works for every index kind (IVF puts
    them in the nearest of its trained lists, HNSW links them into the graph), without re-training.

    Args:
        index: The index to extend in place (also returned for chaining).
        vectors: (m, d) embeddings of the new items.
        ids: (m,) their ids.
        replace: If an id is already present, overwrite its vector instead of raising. Not possible for
            HNSW indexes (faiss cannot remove from the graph): a clear error says what to do instead.

    Returns:
        ``index``.
    """
    new_vectors = _l2_normalise(_as_float32_matrix(vectors, "vectors"))
    if new_vectors.shape[1] != index.dim:
        raise ValueError(f"New item vectors have dim {new_vectors.shape[1]}, the index has dim {index.dim}.")
    new_ids = _as_int64_ids(ids, new_vectors.shape[0])
    clash = np.isin(new_ids, index.ids())
    if clash.any():
        if not replace:
            raise ValueError(
                f"Item ids already in the index: {new_ids[clash][:10].tolist()}; pass replace=True to overwrite."
            )
        _remove(index, new_ids[clash])
    index.cpu_index.add_with_ids(new_vectors, new_ids)
    if index._gpu_index is not None:
        index._gpu_index.add_with_ids(new_vectors, new_ids)
    return index


def search(
    index: ItemIndex,
    queries: Any,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by cosine similarity, never returning a query's excluded (history) items.

    Exact for a ``Flat`` index; for IVF/HNSW the approximate top-k at the index's ``nprobe``/``efSearch``.

    The index is asked for ``k + max(len(exclude_i))`` neighbours: at most ``len(exclude_i)`` of them
    can be excluded, so at least ``k`` valid ones remain whenever the catalogue has them.

    Args:
        index: The item index.
        queries: (q, d) query vectors (e.g. LLM4Rec's z); normalised here.
        k: Number of results per query.
        exclude: Optional per-query item ids to drop (the user's input history); ``len(exclude) == q``.

    Returns:
        ``(ids, scores)``, both (q, k): item ids (int64) and cosine scores (float32), best first. Slots
        that cannot be filled (catalogue smaller than k after exclusion) hold ``-1`` and ``-inf``.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}.")
    query_matrix = _l2_normalise(_as_float32_matrix(queries, "queries"))
    n_queries = query_matrix.shape[0]
    if query_matrix.shape[1] != index.dim:
        raise ValueError(f"Queries have dim {query_matrix.shape[1]}, the index has dim {index.dim}.")
    if exclude is not None and len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries; pass one list per query.")

    out_ids = np.full((n_queries, k), MISSING_ID, dtype=np.int64)
    out_scores = np.full((n_queries, k), MISSING_SCORE, dtype=np.float32)
    if index.ntotal == 0 or n_queries == 0:
        return out_ids, out_scores

    max_excluded = max((len(items) for items in exclude), default=0) if exclude is not None else 0
    # faiss rejects k larger than ntotal on some index types (and pads with -1 otherwise).
    fetch = min(k + max_excluded, index.ntotal)
    scores, ids = index._search_index().search(query_matrix, fetch)

    if max_excluded == 0:
        width = min(k, fetch)
        out_ids[:, :width] = ids[:, :width]
        out_scores[:, :width] = scores[:, :width]
    else:
        for row in range(n_queries):
            keep = ids[row] != MISSING_ID
            if len(exclude[row]) > 0:
                keep &= ~np.isin(ids[row], np.asarray(list(exclude[row]), dtype=np.int64))
            kept_ids = ids[row][keep][:k]
            out_ids[row, : kept_ids.shape[0]] = kept_ids
            out_scores[row, : kept_ids.shape[0]] = scores[row][keep][:k]
    # Empty slots from faiss itself (fewer than `fetch` items) carry id -1 and a huge negative score.
    out_scores[out_ids == MISSING_ID] = MISSING_SCORE
    return out_ids, out_scores


def save_item_index(index: ItemIndex, path: str | os.PathLike[str]) -> None:
    """Write the (CPU) index with ``faiss.write_index`` to a temp file, then atomically rename it.

    The file holds the factory's structure (trained IVF lists, HNSW graph), the ids and the search parameters.

    The rename means a reader never sees a half-written index, even if the writer crashes.
    """
    with atomic_file(path) as tmp:
        faiss.write_index(index.cpu_index, str(tmp))


def load_item_index(
    path: str | os.PathLike[str], use_gpu: bool | str = "auto", search_params: dict[str, Any] | None = None
) -> ItemIndex:
    """Read an index written by :func:`save_item_index`: same factory, same ids, same search parameters
    (faiss stores ``nprobe``/``efSearch`` in the file) unless ``search_params`` overrides them.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is a faiss index of another kind (not an IDMap2 over an inner-product index).
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No item index at {source}; run the indexing pipeline first.")
    loaded = faiss.read_index(str(source))
    if not isinstance(loaded, faiss.IndexIDMap2):
        # read_index returns the most derived Python proxy; downcast covers older faiss builds.
        loaded = faiss.downcast_index(loaded)
    if not isinstance(loaded, faiss.IndexIDMap2) or loaded.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(
            f"{source} is not an item index written by save_item_index (IDMap2 over an inner-product index)."
        )
    ivf = _ivf_of(loaded)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()  # files written by other tools: needed to read vectors back
    index = ItemIndex(cpu_index=loaded, dim=int(loaded.d), use_gpu=_resolve_use_gpu(use_gpu, loaded))
    return set_search_params(index, search_params)
