"""Baselines: Pop, BPR-MF, SASRec and BERT4Rec trained and scored under the protocol, and the baseline table
(with LightGCN's rows from ``cf_pretraining``). The registry of baselines is ``tokenrec_pipeline.core.baselines``."""

from .pipeline import create_pipeline, create_sequential_pipeline

__all__ = ["create_pipeline", "create_sequential_pipeline"]
