"""The MIPS augmentation ranks exactly like the inner product; the cosine space like the cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenrec_pipeline.evaluation.item_index import build_item_index, search
from tokenrec_pipeline.models.item_space import (
    items_for_index,
    items_to_space,
    max_item_norm,
    queries_to_space,
    space_dim,
)


def _items_and_queries(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Norms spread over two orders of magnitude, as LightGCN's popular / rare items are.
    items = torch.randn(300, 16, generator=generator) * torch.logspace(-1, 1, 300).unsqueeze(1)
    queries = torch.randn(40, 16, generator=generator) * 3.0
    return items, queries


def test_mips_space_ranks_exactly_like_the_inner_product() -> None:
    items, queries = _items_and_queries()
    unit_items = items_to_space(items, "mips")
    unit_queries = queries_to_space(queries, "mips")
    assert unit_items.shape == (300, 17) and unit_queries.shape == (40, 17)
    torch.testing.assert_close(unit_items.norm(dim=1), torch.ones(300))
    cosine = unit_queries @ unit_items.T
    inner = queries @ items.T
    # cos(z', q') = z . q / (|z| M): a positive per-query scale of the inner product.
    scale = (queries.norm(dim=1, keepdim=True) * max_item_norm(items))
    torch.testing.assert_close(cosine * scale, inner, atol=1e-4, rtol=1e-4)
    assert torch.equal(cosine.argsort(dim=1, descending=True)[:, :50], inner.argsort(dim=1, descending=True)[:, :50])
    # ...and not like the cosine, which is what the augmentation is for.
    plain_cosine = queries_to_space(queries, "cosine") @ items_to_space(items, "cosine").T
    assert not torch.equal(plain_cosine.argmax(dim=1), inner.argmax(dim=1))


def test_mips_index_serves_the_inner_product_top_k() -> None:
    items, queries = _items_and_queries(1)
    index = build_item_index(items_to_space(items, "mips").numpy(), np.arange(300), use_gpu=False)
    ids, _ = search(index, queries_to_space(queries, "mips").numpy(), k=20)
    np.testing.assert_array_equal(ids, (queries @ items.T).topk(20, dim=1).indices.numpy())


def test_new_items_share_the_catalogue_scale_and_are_clipped_above_it() -> None:
    items, _ = _items_and_queries()
    m = max_item_norm(items)
    new = torch.stack([items[0] * 0.5, items[0] / items[0].norm() * (3 * m)])
    placed = items_for_index(new, space_dim(16, "mips"), items)
    torch.testing.assert_close(placed, items_to_space(new, "mips", m))
    torch.testing.assert_close(placed.norm(dim=1), torch.ones(2))
    assert placed[1, -1] == 0.0  # above M: norm clipped to M, direction kept
    torch.testing.assert_close(placed[1, :16], items[0] / items[0].norm())
    torch.testing.assert_close(items_for_index(new, 16, items), items_to_space(new, "cosine"))
    with pytest.raises(ValueError, match="dimension 5"):
        items_for_index(new, 5, items)
    with pytest.raises(ValueError, match="llm4rec.model.item_space"):
        items_to_space(items, "dot")
