"""CF pretraining: the tokenizers' teacher (LightGCN; BPR-MF for the "w/o HOCK" ablation) and its
collaborative embeddings ``cf_embeddings``, with LightGCN's own evaluation rows."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
