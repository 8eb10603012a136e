"""Ingestion: one named source (or the synthetic default) -> the ``interactions`` table."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
