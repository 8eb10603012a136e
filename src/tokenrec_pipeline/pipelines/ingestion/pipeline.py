"""Ingestion pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import ingest_interactions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                ingest_interactions,
                inputs=["raw_data", "params:dataset", "params:ingestion", "params:seed"],
                outputs=["interactions", "ingestion_metadata"],
                name="ingest_interactions",
            )
        ]
    )
