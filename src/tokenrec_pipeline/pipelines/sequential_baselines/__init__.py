"""Sequential baselines: SASRec and BERT4Rec as two namespaced variants of one training pipeline."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
