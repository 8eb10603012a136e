"""Fold-in of users / items outside training from their histories (no retraining) and its calibration."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from tokenrec_pipeline.evaluation.ranking import Histories, histories_to_csr
from tokenrec_pipeline.models.cf.data import TrainInteractions

FoldInMethod = Literal["symmetric", "mean"]


def _aggregate(
    neighbour_embeddings: Tensor,
    neighbours: Histories,
    n_rows: int,
    neighbour_degree: np.ndarray | Tensor | None,
    method: FoldInMethod,
) -> Tensor:
    indptr, indices = histories_to_csr(neighbours, n_rows)
    lengths = np.diff(indptr)
    n_neigh = neighbour_embeddings.shape[0]
    if len(indices) and (indices.min() < 0 or indices.max() >= n_neigh):
        raise ValueError(f"fold-in neighbour ids must lie in [0, {n_neigh}); check the id mapping.")
    device = neighbour_embeddings.device
    rows = torch.as_tensor(np.repeat(np.arange(n_rows), lengths), device=device)
    cols = torch.tensor(indices, device=device)
    own_degree = torch.as_tensor(lengths, dtype=torch.float32, device=device).clamp(min=1.0)
    if method == "mean":
        weights = 1.0 / own_degree[rows]
    elif method == "symmetric":
        if neighbour_degree is None:
            raise ValueError(
                "method='symmetric' needs the neighbours' train degrees (CFResult.item_degree / user_degree)."
            )
        if isinstance(neighbour_degree, Tensor):
            deg = neighbour_degree.to(dtype=torch.float32, device=device)
        else:
            deg = torch.tensor(np.asarray(neighbour_degree), dtype=torch.float32, device=device)
        if deg.shape[0] != n_neigh:
            raise ValueError(f"neighbour_degree has {deg.shape[0]} entries for {n_neigh} embeddings.")
        # A neighbour with no train edge (degree 0) counts as degree 1 rather than dividing by zero.
        weights = torch.rsqrt(own_degree[rows] * deg.clamp(min=1.0)[cols])
    else:
        raise ValueError(f"fold-in method must be 'symmetric' or 'mean', got {method!r}.")
    out = torch.zeros((n_rows, neighbour_embeddings.shape[1]), dtype=neighbour_embeddings.dtype, device=device)
    out.index_add_(0, rows, neighbour_embeddings[cols] * weights.unsqueeze(1).to(neighbour_embeddings.dtype))
    return out


def fold_in_user_embeddings(
    item_basis: Tensor,
    histories: Histories,
    item_degree: np.ndarray | Tensor | None = None,
    method: FoldInMethod = "symmetric",
) -> Tensor:
    """Embeddings of users who were not in training, from their item histories (no retraining).

    ``symmetric`` (default)::

        e_u = sum_{i in N(u)} b_i / sqrt(|N(u)| * |N(i)|)

    with ``|N(u)|`` the history length, ``|N(i)|`` the item's TRAIN degree (0 counted as 1) and
    ``b_i`` the item's fold-in basis, ``CFResult.item_fold_in_basis``. For LightGCN that basis is
    ``b_i = sum_{l=0}^{L-1} alpha_{l+1} e_i^(l)`` (layer-l embeddings of the trained model), which
    makes ``e_u`` exactly LightGCN's final embedding of a user node attached to the frozen train
    graph, minus the ego term ``alpha_0 e_u^(0)`` that has no trained value for a new user
    (for a seen user, ``trained e_u - alpha_0 e_u^(0)`` equals this fold-in of their train items;
    the tests check it). For MF the basis is the item embedding table. Passing the final item
    embeddings as basis gives one extra propagation step on them instead. ``mean``:
    ``e_u = mean_{i in N(u)} b_i``.

    Row ``r`` of the result belongs to history row ``r``; an empty history gives a zero vector.
    Pure: reads the embeddings, never writes them, no gradient.
    """
    n_rows = len(histories[0]) - 1 if isinstance(histories, tuple) else len(histories)
    with torch.no_grad():
        return _aggregate(item_basis.detach(), histories, n_rows, item_degree, method)


def fold_in_item_embeddings(
    user_basis: Tensor,
    item_users: Histories,
    user_degree: np.ndarray | Tensor | None = None,
    method: FoldInMethod = "symmetric",
) -> Tensor:
    """Embeddings of new items from the seen users who interacted with them; the mirror of
    :func:`fold_in_user_embeddings`: ``e_i = sum_{u in N(i)} b_u / sqrt(|N(i)| * |N(u)|)`` with
    ``b_u`` from ``CFResult.user_fold_in_basis`` and ``|N(u)|`` the user's TRAIN degree
    (``method="mean"``: the mean of the ``b_u``). Rows follow ``item_users``."""
    n_rows = len(item_users[0]) - 1 if isinstance(item_users, tuple) else len(item_users)
    with torch.no_grad():
        return _aggregate(user_basis.detach(), item_users, n_rows, user_degree, method)


def _csr_by(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of ``cols`` grouped by ``rows`` (rows 0..n_rows-1)."""
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, np.asarray(cols, dtype=np.int64)[order]


def _least_squares_scale(target: Tensor, approx: Tensor) -> float:
    """``argmin_c ||target - c * approx||^2`` (1.0 when ``approx`` is all zeros)."""
    denom = float(approx.square().sum())
    return float((target * approx).sum()) / denom if denom > 0 else 1.0


def fold_in_scales(
    train: TrainInteractions, embeddings: Tensor, basis: Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """Per fold-in method, the scale mapping the fold-in of every train user / item (from its
    train edges) onto its trained vector."""
    n_seen = train.n_seen_users
    user_items = _csr_by(train.users, train.items, n_seen)
    item_users = _csr_by(train.items, train.users, train.n_items)
    user_scales, item_scales = {}, {}
    for method in ("symmetric", "mean"):
        users_folded = fold_in_user_embeddings(basis[n_seen:], user_items, train.item_degree, method)
        items_folded = fold_in_item_embeddings(basis[:n_seen], item_users, train.user_degree, method)
        user_scales[method] = _least_squares_scale(embeddings[:n_seen], users_folded)
        item_scales[method] = _least_squares_scale(embeddings[n_seen:], items_folded)
    return user_scales, item_scales
