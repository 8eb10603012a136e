"""Nodes of the indexing stage."""

from __future__ import annotations

import logging

import numpy as np

from tokenrec_pipeline.evaluation.item_index import ItemIndex, build_item_index
from tokenrec_pipeline.models.llm4rec import LLM4Rec

logger = logging.getLogger(__name__)


def build_index(cf_embeddings: dict, llm4rec_model: LLM4Rec, indexing: dict, seed: int) -> ItemIndex:
    """A faiss cosine index (inner product on unit vectors) over every item's CF vector in the language
    model's item space (cosine: q / |q|; MIPS: the augmented unit vectors), keyed by item id.
    ``indexing.faiss_factory`` picks exact ``Flat`` (default) or an approximate ``IVF<nlist>,Flat`` /
    ``HNSW<M>`` index with ``indexing.search_params`` (``nprobe`` / ``efSearch``); IVF lists are trained on
    the item vectors with ``seed``. GPU when faiss-gpu and CUDA are present (``indexing.use_gpu: auto``)."""
    vectors = llm4rec_model.items_in_space(cf_embeddings["item_embeddings"]).numpy()
    index = build_item_index(
        vectors,
        np.arange(len(vectors), dtype=np.int64),
        use_gpu=indexing["use_gpu"],
        factory=indexing["faiss_factory"],
        search_params=indexing["search_params"],
        seed=seed,
    )
    logger.info("Item index %s %s: %d items, d=%d, gpu=%s", index.factory, index.search_params, index.ntotal,
                index.dim, index.use_gpu)
    return index
