"""Collaborative embeddings: the module moves to this package (``training.py`` for now)."""

from tokenrec_pipeline.models.cf.training import *  # noqa: F403
