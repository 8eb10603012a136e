"""Protocol evaluation of trained CF embeddings and of the Pop baseline (seen and unseen users)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tokenrec_pipeline.core.params import resolve_device
from tokenrec_pipeline.evaluation.ranking import (
    DEFAULT_KS,
    GroupSpec,
    RankingResult,
    ScoreFn,
    eval_inputs_from_splits,
    evaluate_user_groups,
)
from tokenrec_pipeline.models.cf.config import CFResult
from tokenrec_pipeline.models.cf.data import train_interactions_from_splits
from tokenrec_pipeline.models.cf.fold_in import FoldInMethod


def popularity_score_fn(counts: np.ndarray | Tensor, device: str | torch.device | None = None) -> ScoreFn:
    """Score function giving every user the item counts as scores (ties are resolved by the evaluator)."""
    target = resolve_device(device) if device is not None else None
    if isinstance(counts, Tensor):
        scores = counts.to(dtype=torch.float32, device=target)
    else:
        scores = torch.tensor(np.asarray(counts), dtype=torch.float32, device=target)

    def score_fn(user_ids: Tensor) -> Tensor:
        # expand() is a view: no (batch, n_items) copy; the evaluator never writes into it.
        return scores.unsqueeze(0).expand(len(user_ids), -1)

    return score_fn


def evaluate_cf(
    result: CFResult,
    interactions_split: pd.DataFrame,
    *,
    split: Literal["valid", "test"] = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    fold_in_method: FoldInMethod = "symmetric",
    model: str | None = None,
) -> tuple[pd.DataFrame, dict[str, RankingResult]]:
    """Protocol metrics of trained CF embeddings for seen and unseen users (long table + results).

    * seen users: the best epoch's user vectors (selected on valid only); ``test``: history =
      train + valid items, target = test item; ``valid``: history = train, target = valid.
    * unseen users (``test`` only): vectors folded in from ``unseen_history``
      (:meth:`CFResult.fold_in_users` with ``fold_in_method``); history = unseen_history,
      target = unseen_test.
    """
    groups: dict[str, GroupSpec] = {}
    seen = eval_inputs_from_splits(interactions_split, "seen", split)
    seen_vectors = result.user_embeddings[torch.as_tensor(seen.users)]
    groups["seen"] = GroupSpec(seen, user_vectors=seen_vectors, item_vectors=result.item_embeddings)
    if split == "test":
        unseen = eval_inputs_from_splits(interactions_split, "unseen", "test")
        unseen_vectors = result.fold_in_users(unseen.histories, fold_in_method)
        groups["unseen"] = GroupSpec(unseen, user_vectors=unseen_vectors, item_vectors=result.item_embeddings)
    return evaluate_user_groups(groups, model=model or result.model_name, split=split, ks=ks, batch_size=batch_size)


def evaluate_pop(
    interactions_split: pd.DataFrame,
    *,
    split: Literal["valid", "test"] = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
) -> tuple[pd.DataFrame, dict[str, RankingResult]]:
    """Pop baseline under the protocol: scores = TRAIN counts, seen (and, for test, unseen) users."""
    train = train_interactions_from_splits(interactions_split)
    score_fn = popularity_score_fn(train.item_degree)
    groups = {"seen": GroupSpec(eval_inputs_from_splits(interactions_split, "seen", split), score_fn=score_fn)}
    if split == "test":
        groups["unseen"] = GroupSpec(eval_inputs_from_splits(interactions_split, "unseen", "test"), score_fn=score_fn)
    return evaluate_user_groups(groups, model="pop", split=split, ks=ks, batch_size=batch_size)
