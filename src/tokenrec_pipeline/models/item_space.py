"""The space TokenRec scores items in: cosine (the paper's) or maximum inner product (MIPS).

The paper scores ``cos(z, q_j)``. Cosine throws away the norm of the item vectors, and LightGCN's item
norms carry popularity (their correlation with training degree is high): LightGCN's own user vectors,
scored by cosine instead of inner product, lose about half their HR@20 on the default data. The
``mips`` space ranks by ``z . q_j`` and keeps a *cosine* index and a *cosine* loss, through the
standard augmentation (Bachrach et al., 2014)::

    q'_j = [q_j / M, sqrt(1 - |q_j|^2 / M^2)]        (M = largest item norm; |q'_j| = 1)
    z'   = [z / |z|, 0]

so that ``cos(z', q'_j) = z . q_j / (|z| M)``: for one query, the same order as the inner product.
Items added later with a norm above ``M`` are clipped to norm ``M`` (their last coordinate is 0).

Shapes: ``I`` items, ``N`` queries, ``d`` CF dimension; ``d' = d`` (cosine) or ``d + 1`` (mips).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ItemSpace = Literal["cosine", "mips"]
ITEM_SPACES: tuple[str, ...] = ("cosine", "mips")


def check_item_space(space: str) -> str:
    """``space`` if it is a known item space, else a ValueError naming the parameter."""
    if space not in ITEM_SPACES:
        raise ValueError(f"llm4rec.model.item_space must be one of {list(ITEM_SPACES)}, got {space!r}.")
    return space


def space_dim(cf_dim: int, space: str) -> int:
    """``d'``: the dimension of vectors in ``space`` for CF vectors of dimension ``cf_dim``."""
    return cf_dim + 1 if check_item_space(space) == "mips" else cf_dim


def max_item_norm(item_vectors: torch.Tensor) -> float:
    """``M``: the largest L2 norm among the (I, d) item vectors (1.0 for an empty or all-zero table)."""
    if item_vectors.numel() == 0:
        return 1.0
    norm = float(item_vectors.detach().float().norm(dim=1).max())
    return norm if norm > 0 else 1.0


def items_to_space(item_vectors: torch.Tensor, space: str, max_norm: float | None = None) -> torch.Tensor:
    """(I, d) CF item vectors -> (I, d') unit vectors of ``space``.

    Args:
        item_vectors: Raw item vectors q_j.
        space: "cosine" (q / |q|) or "mips" (the augmentation above).
        max_norm: ``M`` for "mips" (``None``: the largest norm in ``item_vectors``). Pass the training
            catalogue's ``M`` when adding items later, so that old and new items share one scale.
    """
    vectors = item_vectors.detach().float()
    if check_item_space(space) == "cosine":
        return F.normalize(vectors, dim=-1)
    m = max_item_norm(vectors) if max_norm is None else float(max_norm)
    scaled = vectors / m
    squared = scaled.square().sum(dim=1, keepdim=True)
    # Norms above M (new items) are clipped to M: direction kept, last coordinate 0.
    scaled = scaled / squared.clamp(min=1.0).sqrt()
    tail = (1.0 - scaled.square().sum(dim=1, keepdim=True)).clamp(min=0.0).sqrt()
    return torch.cat([scaled, tail], dim=1)


def queries_to_space(z: torch.Tensor, space: str) -> torch.Tensor:
    """(N, d) projected prompts -> (N, d') unit queries of ``space`` (differentiable)."""
    unit = F.normalize(z.float(), dim=-1)
    if check_item_space(space) == "cosine":
        return unit
    return torch.cat([unit, unit.new_zeros(unit.shape[0], 1)], dim=1)


def items_for_index(item_vectors: torch.Tensor, index_dim: int, catalogue_vectors: torch.Tensor) -> torch.Tensor:
    """New items' (n, d) CF vectors -> the space of an existing index of dimension ``index_dim``.

    ``d``: a cosine index; ``d + 1``: a MIPS index, whose ``M`` is the largest norm of the training
    catalogue ``catalogue_vectors`` (the same ``M`` the language model was trained with).
    """
    d = int(item_vectors.shape[1])
    if index_dim == d:
        return items_to_space(item_vectors, "cosine")
    if index_dim == d + 1:
        return items_to_space(item_vectors, "mips", max_item_norm(catalogue_vectors))
    raise ValueError(f"The item index has dimension {index_dim}, which fits neither the cosine ({d}) nor the MIPS "
                     f"({d + 1}) space of {d}-dimensional CF vectors; rerun `kedro run --pipeline=full`.")
