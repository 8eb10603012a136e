"""Nodes of the ingestion stage."""

from __future__ import annotations

import logging

import pandas as pd

from tokenrec_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_interactions
from tokenrec_pipeline.io.datasets import RawData

logger = logging.getLogger(__name__)


def ingest_interactions(
    raw_data: RawData, dataset: str, ingestion: dict, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Produce the ``interactions`` table (user, item, timestamp, rating) for ``dataset``.

    ``synthetic`` is generated from ``ingestion.synthetic`` and the seed; every other name is
    read from ``data/01_raw/<dataset>/`` (downloaded and verified first when absent).

    Returns:
        (interactions, ingestion_metadata) — the metadata names the files read and their SHA-256.
    """
    if dataset == "synthetic":
        config = SyntheticConfig.from_params(ingestion["synthetic"])
        interactions = generate_synthetic_interactions(config, seed)
        metadata = {"dataset": dataset, "generator": "synthetic", "seed": seed, **vars(config)}
    else:
        interactions, metadata = raw_data.read(dataset, ingestion)
    metadata["rows"] = int(len(interactions))
    quality = metadata.get("data_quality") or {}
    if quality.get("rows_dropped"):
        logger.warning("Ingested %s: %d of %d rows dropped (%s); see ingestion_metadata.json, data_quality.",
                       dataset, quality["rows_dropped"], quality["rows_read"],
                       ", ".join(f"{reason}: {entry['count']}" for reason, entry in quality["dropped"].items()))
    logger.info(
        "Ingested %s: %d interactions, %d users, %d items",
        dataset, len(interactions), interactions["user"].nunique(), interactions["item"].nunique(),
    )
    # Ids are strings from here on, so every source looks the same to preprocessing.
    return interactions.astype({"user": str, "item": str}), metadata
