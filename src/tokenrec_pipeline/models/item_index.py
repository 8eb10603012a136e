"""Vector index over item collaborative embeddings for TokenRec's top-K retrieval.

TokenRec scores every item by ``cos(z_u, q_j)`` (paper, "Generative Retrieval", step 4). With
L2-normalised vectors the inner product *is* the cosine, so an exact ``faiss.IndexFlatIP`` gives the
same ranking as a brute-force cosine over the whole catalogue. The flat index is wrapped in an
``IndexIDMap2`` so that the project's item ids (not faiss' row numbers) come back from a search, and so
that new items can be appended with their own ids without re-training anything (paper: new items are
served by "updating the external vector database").

The CPU index is always the source of truth (it is what gets saved). When requested and available, a
GPU mirror answers the searches; it is kept in sync on every add and rebuilt after a removal.

Shapes: ``n`` items, ``q`` queries, ``d`` embedding dimension, ``k`` results per query.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

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


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus is not None and hasattr(faiss, "StandardGpuResources") and get_num_gpus() > 0)


@dataclass
class ItemIndex:
    """An exact cosine index over items, keyed by the project's item ids.

    Attributes:
        cpu_index: ``faiss.IndexIDMap2`` over ``faiss.IndexFlatIP`` holding L2-normalised item vectors.
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
            # index_cpu_to_gpu clones the IDMap wrapper and moves the flat sub-index to the device.
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.cpu_index)
        return self._gpu_index


def _resolve_use_gpu(use_gpu: bool | str) -> bool:
    """Turn the ``use_gpu`` parameter ("auto", True, False) into a decision, explaining impossible asks."""
    if use_gpu == "auto":
        return faiss_gpu_available()
    if isinstance(use_gpu, str):
        raise ValueError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}.")
    if use_gpu and not faiss_gpu_available():
        raise RuntimeError(
            "use_gpu=True but this faiss build has no GPU support or sees no GPU. Install the `gpu` extra "
            "(faiss-gpu) on a CUDA machine, or set the indexing parameter use_gpu to 'auto' or false."
        )
    return bool(use_gpu)


def build_item_index(item_vectors: Any, item_ids: Any | None = None, use_gpu: bool | str = "auto") -> ItemIndex:
    """Build an exact cosine (inner product over normalised vectors) index.

    Args:
        item_vectors: (n, d) item embeddings (numpy array or torch tensor); normalised here.
        item_ids: (n,) non-negative unique ids; defaults to ``0..n-1`` (row order).
        use_gpu: "auto" (GPU when faiss has GPU support and sees a GPU), True, or False.

    Returns:
        The :class:`ItemIndex`.
    """
    vectors = _l2_normalise(_as_float32_matrix(item_vectors, "item_vectors"))
    n_items, dim = vectors.shape
    ids = np.arange(n_items, dtype=np.int64) if item_ids is None else _as_int64_ids(item_ids, n_items)
    cpu_index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    cpu_index.add_with_ids(vectors, ids)
    index = ItemIndex(cpu_index=cpu_index, dim=dim, use_gpu=_resolve_use_gpu(use_gpu))
    logger.info("Built item index: %d items, dim %d, %s.", n_items, dim, "GPU" if index.use_gpu else "CPU")
    return index


def add_items(index: ItemIndex, vectors: Any, ids: Any, replace: bool = False) -> ItemIndex:
    """Add new items; they are retrievable by the very next search.

    Args:
        index: The index to extend in place (also returned for chaining).
        vectors: (m, d) embeddings of the new items.
        ids: (m,) their ids.
        replace: If an id is already present, overwrite its vector instead of raising.

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
        index.cpu_index.remove_ids(new_ids[clash])
        index._gpu_index = None  # GPU flat indexes cannot remove ids: rebuild the mirror on next search
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

    The rename means a reader never sees a half-written index, even if the writer crashes.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        faiss.write_index(index.cpu_index, tmp_name)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_item_index(path: str | os.PathLike[str], use_gpu: bool | str = "auto") -> ItemIndex:
    """Read an index written by :func:`save_item_index`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is a faiss index of another kind (not IDMap over inner-product flat).
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"No item index at {source}; run the indexing pipeline first.")
    loaded = faiss.read_index(str(source))
    if not isinstance(loaded, faiss.IndexIDMap2):
        # read_index returns the most derived Python proxy; downcast covers older faiss builds.
        loaded = faiss.downcast_index(loaded)
    if not isinstance(loaded, faiss.IndexIDMap2) or loaded.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{source} is not an item index written by save_item_index (IDMap2 over IndexFlatIP).")
    return ItemIndex(cpu_index=loaded, dim=int(loaded.d), use_gpu=_resolve_use_gpu(use_gpu))
