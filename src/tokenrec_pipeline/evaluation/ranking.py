"""The one full-ranking evaluator used by every model in the project.

Protocol (docs/DESIGN.md, "Evaluation protocol"): every evaluated user has one target item and an input
history. All items are ranked; the history items get score ``-inf`` (never 0: with cosine scores a
0 would still outrank every negatively scored item); the target is never excluded, even when it
also appears in the history. HR@K and NDCG@K are averaged over users.

Tie rule: **expected rank under a uniformly random order of tied items.** For each user let

* ``g`` = number of non-excluded items whose score is strictly greater than the target's, and
* ``t`` = number of other non-excluded items whose score equals the target's.

Under a random order within the tie the target's 0-based rank is uniform on ``{g, ..., g + t}``, so

* ``HR@K   = |{r in g..g+t : r < K}| / (t + 1)``
* ``NDCG@K = sum_{r in g..g+t, r < K} 1 / log2(r + 2) / (t + 1)``

and the reported per-user rank is its expectation ``g + t / 2``. This is deterministic (no random
tie breaking), independent of how ids were assigned, exact for models with continuous scores
(``t = 0``), and honest for tie-heavy scorers: a constant scorer gets ``HR@K = K / n_candidates``,
never 1, and Pop lands on the "exact expectation" numbers of docs/BENCHMARKS.md. The top-K *lists*
(returned on request, e.g. for serving) break ties by the smaller item id, deterministically.

Ranks are found by comparison counting on a ``(batch, n_items)`` score block — no sort, no per-user
Python loop — so the work runs on whatever device the scores live on (CUDA included).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tokenrec_pipeline.evaluation.inputs import SPLIT_NAMES as SPLIT_NAMES  # re-exported: one import for callers
from tokenrec_pipeline.evaluation.inputs import EvalInputs as EvalInputs
from tokenrec_pipeline.evaluation.inputs import Histories as Histories
from tokenrec_pipeline.evaluation.inputs import SplitSizes as SplitSizes
from tokenrec_pipeline.evaluation.inputs import eval_inputs_from_splits as eval_inputs_from_splits
from tokenrec_pipeline.evaluation.inputs import histories_to_csr as histories_to_csr
from tokenrec_pipeline.evaluation.inputs import split_sizes as split_sizes

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (10, 20, 30)
"""Cut-offs of the paper's tables."""

ScoreFn = Callable[[Tensor], Tensor]
"""``score_fn(user_ids: LongTensor (B,)) -> scores (B, n_items)``; higher is better."""

Similarity = Literal["dot", "cosine"]


# ----------------------------------------------------------------------------------------------
# Metrics from (n_greater, n_tied)
# ----------------------------------------------------------------------------------------------


def _discount_prefix(max_k: int) -> np.ndarray:
    """``D[n] = sum_{r < n} 1 / log2(r + 2)`` for n = 0..max_k."""
    prefix = np.zeros(max_k + 1, dtype=np.float64)
    prefix[1:] = np.cumsum(1.0 / np.log2(np.arange(max_k) + 2.0))
    return prefix


def expected_hit_rate(n_greater: np.ndarray, n_tied: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k under a uniformly random order of the ``n_tied`` items tied with the target."""
    g = np.asarray(n_greater, dtype=np.float64)
    t = np.asarray(n_tied, dtype=np.float64)
    return np.clip(k - g, 0.0, t + 1.0) / (t + 1.0)


def expected_ndcg(n_greater: np.ndarray, n_tied: np.ndarray, k: int) -> np.ndarray:
    """Per-user single-target NDCG@k (``1/log2(rank+2)`` if rank < k) averaged over the tie order."""
    g = np.asarray(n_greater, dtype=np.int64)
    t = np.asarray(n_tied, dtype=np.int64)
    prefix = _discount_prefix(k)
    hi = np.minimum(g + t + 1, k)
    lo = np.minimum(g, k)
    return (prefix[hi] - prefix[lo]) / (t + 1.0)


@dataclass
class RankingResult:
    """Outcome of one evaluation.

    ``metrics`` holds ``HR@K`` / ``NDCG@K`` averaged over users; ``n_greater`` / ``n_tied`` are the
    per-user counts behind them (see the module docstring), ``ranks`` their expected 0-based rank.
    ``topk_items`` (users x max K, best first, ties -> smaller id, ``-1`` where fewer candidates
    than K exist) is filled only when requested.
    """

    metrics: dict[str, float]
    users: np.ndarray
    targets: np.ndarray
    n_greater: np.ndarray
    n_tied: np.ndarray
    ks: tuple[int, ...]
    topk_items: np.ndarray | None = None
    seconds: float = field(default=0.0)

    @property
    def ranks(self) -> np.ndarray:
        """Expected 0-based rank of each user's target (``n_greater + n_tied / 2``)."""
        return self.n_greater + self.n_tied / 2.0

    @property
    def n_users(self) -> int:
        return len(self.users)

    def per_user(self, metric: str) -> np.ndarray:
        """Per-user values of ``"HR@K"`` or ``"NDCG@K"`` (any K), e.g. for paired significance tests."""
        name, _, k_str = metric.partition("@")
        if not k_str.isdigit() or name not in {"HR", "NDCG"}:
            raise ValueError(f"metric must look like 'HR@20' or 'NDCG@10', got {metric!r}.")
        fn = expected_hit_rate if name == "HR" else expected_ndcg
        return fn(self.n_greater, self.n_tied, int(k_str))


def _metrics_from_counts(n_greater: np.ndarray, n_tied: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    empty = len(n_greater) == 0
    for k in ks:
        metrics[f"HR@{k}"] = float("nan") if empty else float(expected_hit_rate(n_greater, n_tied, k).mean())
        metrics[f"NDCG@{k}"] = float("nan") if empty else float(expected_ndcg(n_greater, n_tied, k).mean())
    return metrics


# ----------------------------------------------------------------------------------------------
# Batched core
# ----------------------------------------------------------------------------------------------


def topk_items(scores: Tensor, k: int) -> Tensor:
    """Deterministic top-``k`` item ids per row: by score descending, ties by smaller item id.

    ``torch.topk`` leaves the choice and order among tied items unspecified. Its result is kept
    where it is unambiguous (every item tied with the k-th score made it in); the other rows keep
    the items strictly above the k-th score and fill the remaining slots with the smallest-id
    items *at* that score. Entries whose score is ``-inf`` (excluded items, when fewer than ``k``
    remain) are -1.
    """
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if k == 0 or n_rows == 0:
        return torch.empty((n_rows, k), dtype=torch.long, device=scores.device)
    values, items = scores.topk(k, dim=1)
    kth = values[:, -1:]
    tied_total = (scores == kth).to(torch.float32).sum(dim=1)
    tied_kept = (values == kth).to(torch.float32).sum(dim=1)
    ambiguous = (tied_total > tied_kept).nonzero().squeeze(1)
    if len(ambiguous):
        sub, sub_kth = scores[ambiguous], kth[ambiguous]
        above = sub > sub_kth
        at = sub == sub_kth
        free_slots = k - above.sum(dim=1, keepdim=True)
        # cumsum over the tie mask numbers tied items by increasing id; keep the first `free_slots`.
        chosen = above | (at & (at.cumsum(dim=1) <= free_slots))
        items[ambiguous] = chosen.nonzero()[:, 1].view(len(ambiguous), k)
    # Order: score descending, ties by increasing id (stable sort of id-sorted candidates).
    items = items.sort(dim=1).values
    chosen_scores = scores.gather(1, items)
    order = torch.sort(chosen_scores, dim=1, descending=True, stable=True).indices
    result = items.gather(1, order)
    return result.masked_fill(chosen_scores.gather(1, order) == float("-inf"), -1)


def _rank_counts(
    scores: Tensor, targets: Tensor, hist_rows: Tensor, hist_cols: Tensor, return_masked: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Exclude history items (score -inf, never the target) and count items above / tied with each target.

    Returns ``(n_greater, n_tied, masked_scores)``; ``masked_scores`` (the scores with the excluded
    items at -inf, for top-k lists) is ``None`` unless ``return_masked``. The counts compare the raw
    scores with the target's and clear the excluded entries in the two comparison masks, so the
    (batch, n_items) score matrix is never copied: an excluded item neither outranks nor ties the
    target, whatever its score (also when the target itself scores -inf).
    """
    n_rows = scores.shape[0]
    rows = torch.arange(n_rows, device=scores.device)
    target_scores = scores[rows, targets].unsqueeze(1)
    excluded = hist_cols != targets[hist_rows]  # the target is never excluded, even if in the history
    hist_rows, hist_cols = hist_rows[excluded], hist_cols[excluded]
    # Summing 0/1 floats is several times faster than summing a bool tensor on CPU; float32
    # counts are exact below 2**24 items.
    count_dtype = torch.float32 if scores.shape[1] < 2**24 else torch.float64
    greater = scores > target_scores
    greater[hist_rows, hist_cols] = False
    n_greater = greater.to(count_dtype).sum(dim=1).long()
    tied = scores == target_scores
    tied[hist_rows, hist_cols] = False
    n_tied = tied.to(count_dtype).sum(dim=1).long() - 1  # minus the target itself
    masked = None
    if return_masked:
        masked = scores.clone()
        masked[hist_rows, hist_cols] = float("-inf")
    return n_greater, n_tied, masked


def _abs_max(x: Tensor) -> float:
    """Largest absolute entry of ``x`` (0.0 when empty)."""
    return float(x.detach().abs().amax()) if x.numel() else 0.0


def _as_tensor(x: Tensor | np.ndarray, device: torch.device | None) -> Tensor:
    # torch.tensor copies, so read-only arrays (pandas 3 hands those out) are fine.
    t = x if isinstance(x, Tensor) else torch.tensor(np.asarray(x))
    return t.to(device) if device is not None else t


def evaluate_ranking(
    users: np.ndarray | Sequence[int],
    histories: Histories,
    targets: np.ndarray | Sequence[int],
    *,
    score_fn: ScoreFn | None = None,
    user_vectors: Tensor | np.ndarray | None = None,
    item_vectors: Tensor | np.ndarray | None = None,
    similarity: Similarity = "dot",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    return_topk: bool = False,
    device: str | torch.device | None = None,
) -> RankingResult:
    """Full-ranking HR@K / NDCG@K of each user's target item, history items excluded.

    Give either ``score_fn`` (called with a LongTensor of user ids ``users[batch]``, must return
    ``(B, n_items)`` scores, higher = better) or ``user_vectors`` + ``item_vectors``, where
    ``user_vectors[i]`` is the vector of ``users[i]`` (row-aligned with ``users``, not indexed by
    id) and scores are dot products or cosine similarities. ``histories`` are row-aligned with
    ``users`` (CSR pair or list of arrays) and excluded with score -inf; the target never is.

    ``device`` moves the vectors (vector mode) before scoring; in ``score_fn`` mode it is unused and
    the computation follows the device of the returned scores. ``batch_size`` users are scored at
    a time (memory ~ ``batch_size * n_items * 10`` bytes). Ties: expected rank, see the module
    docstring.
    """
    start = time.perf_counter()
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}.")
    users_np = np.asarray(users, dtype=np.int64)
    targets_np = np.asarray(targets, dtype=np.int64)
    n = len(users_np)
    if len(targets_np) != n:
        raise ValueError(f"{n} users but {len(targets_np)} targets; the protocol has exactly one target per user.")
    indptr, indices = histories_to_csr(histories, n)
    if len(indices) and indices.min() < 0:
        raise ValueError("history item ids must be >= 0; check the item id mapping.")

    if score_fn is not None and (user_vectors is not None or item_vectors is not None):
        raise ValueError("pass either score_fn or user_vectors + item_vectors, not both.")
    if score_fn is None and (user_vectors is None or item_vectors is None):
        raise ValueError("pass score_fn, or both user_vectors and item_vectors.")
    vector_mode = score_fn is None
    if vector_mode:
        dev = torch.device(device) if device is not None else None
        uv = _as_tensor(user_vectors, dev).float()
        iv = _as_tensor(item_vectors, dev).float()
        if uv.shape[0] != n:
            raise ValueError(
                f"user_vectors has {uv.shape[0]} rows for {n} users; row i must be the vector of users[i] "
                "(index a full embedding table with `emb[users]`)."
            )
        if similarity == "cosine":
            # Normalise once; clamp so a zero vector scores 0 instead of NaN.
            uv = torch.nn.functional.normalize(uv, dim=1, eps=1e-12)
            iv = torch.nn.functional.normalize(iv, dim=1, eps=1e-12)
        elif similarity != "dot":
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}.")
    # Finite vectors of moderate size give finite dot products: then one check of the vectors
    # replaces a NaN scan of every (batch, n_items) score matrix.
    finite_vectors = (
        vector_mode
        and bool(torch.isfinite(uv).all())
        and bool(torch.isfinite(iv).all())
        and _abs_max(uv) * _abs_max(iv) * max(uv.shape[1], 1) < 1e30
    )

    n_greater = np.zeros(n, dtype=np.int64)
    n_tied = np.zeros(n, dtype=np.int64)
    max_k = max(ks)
    top = np.zeros((n, max_k), dtype=np.int64) if return_topk else None
    users_t = torch.tensor(users_np)

    with torch.no_grad():
        for s in range(0, n, batch_size):
            e = min(s + batch_size, n)
            if vector_mode:
                scores = uv[s:e] @ iv.T
            else:
                scores = score_fn(users_t[s:e])
                if not isinstance(scores, Tensor) or scores.dim() != 2 or scores.shape[0] != e - s:
                    raise ValueError(
                        f"score_fn must return a (batch, n_items) tensor; for a batch of {e - s} users got "
                        f"{getattr(scores, 'shape', type(scores))}."
                    )
                scores = scores.float()
            n_items = scores.shape[1]
            if not finite_vectors and torch.isnan(scores).any():
                raise ValueError("scores contain NaN; a NaN target would count as rank 0. Check the model's outputs.")
            tgt = torch.tensor(targets_np[s:e], device=scores.device)
            if (tgt < 0).any() or (tgt >= n_items).any():
                raise ValueError(f"target item ids must lie in [0, {n_items}); check the item id mapping.")
            lo, hi = indptr[s], indptr[e]
            if hi > lo and indices[lo:hi].max() >= n_items:
                raise ValueError(f"history item ids must lie in [0, {n_items}); check the item id mapping.")
            cols = torch.tensor(indices[lo:hi], device=scores.device)
            rows = torch.as_tensor(np.repeat(np.arange(e - s), np.diff(indptr[s : e + 1])), device=scores.device)
            g, t, masked = _rank_counts(scores, tgt, rows, cols, return_masked=top is not None)
            n_greater[s:e] = g.cpu().numpy()
            n_tied[s:e] = t.cpu().numpy()
            if top is not None:
                top[s:e] = _pad_topk(topk_items(masked, max_k), max_k).cpu().numpy()

    metrics = _metrics_from_counts(n_greater, n_tied, ks)
    return RankingResult(
        metrics=metrics,
        users=users_np,
        targets=targets_np,
        n_greater=n_greater,
        n_tied=n_tied,
        ks=ks,
        topk_items=top,
        seconds=time.perf_counter() - start,
    )


def _pad_topk(top: Tensor, k: int) -> Tensor:
    """Pad with -1 when there are fewer items than ``k``."""
    if top.shape[1] == k:
        return top
    pad = torch.full((top.shape[0], k - top.shape[1]), -1, dtype=top.dtype, device=top.device)
    return torch.cat([top, pad], dim=1)


def evaluate_inputs(inputs: EvalInputs, **kwargs) -> RankingResult:
    """:func:`evaluate_ranking` on an :class:`EvalInputs` (same keyword arguments)."""
    return evaluate_ranking(inputs.users, inputs.histories, inputs.targets, **kwargs)


# ----------------------------------------------------------------------------------------------
# User groups -> tidy table
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """What to evaluate for one user group: the inputs plus a scorer (``score_fn`` or vectors)."""

    inputs: EvalInputs
    score_fn: ScoreFn | None = None
    user_vectors: Tensor | np.ndarray | None = None
    item_vectors: Tensor | np.ndarray | None = None
    similarity: Similarity = "dot"


METRIC_COLUMNS = ("model", "split", "user_group", "metric", "value", "n_users")
"""Columns of the long ("tidy") metrics table; one row per (model, split, user_group, metric)."""


def metrics_to_frame(results: Mapping[str, RankingResult], *, model: str, split: str) -> pd.DataFrame:
    """Long table with :data:`METRIC_COLUMNS` from ``{user_group: RankingResult}``.

    Long format is the project's canonical layout (concatenates across models / runs, logs to
    MLflow as ``f"{split}/{user_group}/{metric}"``); :func:`metrics_wide` pivots it for reports.
    """
    rows = [
        {"model": model, "split": split, "user_group": group, "metric": name, "value": value, "n_users": res.n_users}
        for group, res in results.items()
        for name, value in res.metrics.items()
    ]
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


RANK_COLUMNS = ("model", "split", "user_group", "user_id", "target_item", "rank", "n_greater", "n_tied")


def ranks_to_frame(results: Mapping[str, RankingResult], *, model: str, split: str) -> pd.DataFrame:
    """Per-user table with :data:`RANK_COLUMNS` from ``{user_group: RankingResult}``: the input of the
    paired significance tests (``n_greater`` / ``n_tied`` keep the exact tie rule)."""
    frames = [
        pd.DataFrame({"model": model, "split": split, "user_group": group, "user_id": res.users,
                      "target_item": res.targets, "rank": res.ranks, "n_greater": res.n_greater, "n_tied": res.n_tied})
        for group, res in results.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RANK_COLUMNS))


def metrics_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, split, user_group), one column per metric (HR@10, NDCG@10, HR@20, ...)."""
    wide = frame.pivot_table(
        index=["model", "split", "user_group", "n_users"], columns="metric", values="value", sort=False
    )
    ordered = sorted(wide.columns, key=lambda m: (int(m.split("@")[1]), m.split("@")[0] != "HR"))
    return wide[ordered].reset_index().rename_axis(columns=None)


def evaluate_user_groups(
    groups: Mapping[str, GroupSpec],
    *,
    model: str,
    split: str,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[pd.DataFrame, dict[str, RankingResult]]:
    """Evaluate each user group (e.g. ``{"seen": ..., "unseen": ...}``) separately.

    Returns the long metrics table (:func:`metrics_to_frame`) and the per-group results (per-user
    ranks for significance tests). Groups with no users are skipped (logged).
    """
    results: dict[str, RankingResult] = {}
    for name, spec in groups.items():
        if len(spec.inputs) == 0:
            logger.info("%s / %s: user group %r has no users; skipped.", model, split, name)
            continue
        results[name] = evaluate_inputs(
            spec.inputs,
            score_fn=spec.score_fn,
            user_vectors=spec.user_vectors,
            item_vectors=spec.item_vectors,
            similarity=spec.similarity,
            ks=ks,
            batch_size=batch_size,
            device=device,
        )
        res = results[name]
        logger.info(
            "%s %s %s (%d users): %s",
            model,
            split,
            name,
            res.n_users,
            ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if not math.isnan(v)),
        )
    return metrics_to_frame(results, model=model, split=split), results
