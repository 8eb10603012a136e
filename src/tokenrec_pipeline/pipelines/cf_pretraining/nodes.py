"""Nodes of the CF pretraining stage (model code in ``tokenrec_pipeline.models.cf``; the CF training node, shared
with the baselines stage's MF, in ``tokenrec_pipeline.core.baselines``)."""

from __future__ import annotations

import logging

import pandas as pd

from tokenrec_pipeline.core.baselines import CF_MODELS, train_cf_model

logger = logging.getLogger(__name__)

__all__ = ["select_cf_embeddings", "train_cf_model"]


def select_cf_embeddings(lightgcn_embeddings: dict, interactions_split: pd.DataFrame, cf_pretraining: dict,
                         mf: dict, seed: int) -> dict:
    """The embeddings the tokenizers learn from: ``cf_pretraining.model`` (lightgcn | mf).

    ``lightgcn``: this stage's LightGCN. ``mf`` (the paper's "w/o HOCK" ablation): BPR-MF trained here with the
    MF baseline's settings ``baselines.mf`` and the run's seed -- the same model the baselines stage trains for
    its rows (the same embeddings on CPU), trained once more so that the teacher does not wait for the baselines.
    """
    choice = cf_pretraining["model"]
    if choice not in CF_MODELS:
        raise ValueError(f"cf_pretraining.model={choice!r} must be one of {list(CF_MODELS)}.")
    if choice == "mf":
        logger.info("cf_pretraining.model=mf: training BPR-MF (baselines.mf) as the tokenizers' teacher.")
        return train_cf_model(interactions_split, mf, cf_pretraining["fold_in"], seed)[0]
    if not lightgcn_embeddings:
        raise ValueError("lightgcn.cf_embeddings is empty: the lightgcn model was not trained in this run.")
    return lightgcn_embeddings
