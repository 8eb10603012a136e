"""Nodes of the indexing stage."""

from __future__ import annotations

import logging

import numpy as np

from tokenrec_pipeline.models.item_index import ItemIndex, build_item_index

logger = logging.getLogger(__name__)


def build_index(cf_embeddings: dict, indexing: dict) -> ItemIndex:
    """A faiss cosine index (IndexFlatIP on L2-normalised vectors) over every item's CF vector,
    keyed by item id; GPU when faiss-gpu and CUDA are present (``indexing.use_gpu: auto``)."""
    vectors = cf_embeddings["item_embeddings"].numpy()
    index = build_item_index(vectors, np.arange(len(vectors), dtype=np.int64), use_gpu=indexing.get("use_gpu", "auto"))
    logger.info("Item index: %d items, d=%d, gpu=%s", index.ntotal, index.dim, index.use_gpu)
    return index
