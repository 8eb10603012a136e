"""What the artefacts shared between stages record about themselves.

``cf_embeddings`` (written by ``cf_pretraining``, read by tokenization, prompting, llm4rec, indexing, evaluation
and serving) is a dict of tensors; besides the vectors it records the fold-in rule its fold-in scales were fitted
for, so that every stage folds new users and items in the way the evaluation did.
"""

from __future__ import annotations

import logging
from typing import get_args

import torch

from tokenrec_pipeline.models.cf import FoldInMethod

logger = logging.getLogger(__name__)

FOLD_IN_METHODS: tuple[str, ...] = get_args(FoldInMethod)
FOLD_IN_KEY = "fold_in_method"  # in cf_embeddings: index into FOLD_IN_METHODS of the rule its scales are for


def encode_fold_in_method(method: str) -> torch.Tensor:
    """The ``cf_embeddings`` entry that records the fold-in rule (a tensor, as every entry of that artefact)."""
    if method not in FOLD_IN_METHODS:
        raise ValueError(f"cf_pretraining.fold_in must be one of {list(FOLD_IN_METHODS)}, got {method!r}.")
    return torch.tensor([FOLD_IN_METHODS.index(method)], dtype=torch.int64)


def recorded_fold_in_method(cf_embeddings: dict) -> str:
    """The fold-in rule ``cf_embeddings`` was evaluated with and whose scale it holds. Artefacts written before
    the rule was recorded were folded in with the default, ``symmetric``."""
    code = cf_embeddings.get(FOLD_IN_KEY)
    if code is None:
        logger.warning("cf_embeddings does not record its fold-in rule (written by an older version): assuming "
                       "'symmetric'; rerun cf_pretraining to record it.")
        return "symmetric"
    return FOLD_IN_METHODS[int(torch.as_tensor(code).reshape(-1)[0])]
