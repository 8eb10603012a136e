"""Preprocessing: implicit feedback, k-core, ids and the protocol splits."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
