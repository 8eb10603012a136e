"""CF pretraining: LightGCN / MF collaborative embeddings and the Pop/MF/LightGCN baselines."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
