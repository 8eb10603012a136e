"""Tokenization: users and items -> K discrete tokens each (MQ-Tokenizer or a substitute)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
