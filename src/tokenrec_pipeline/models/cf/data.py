"""Training pairs of the seen users (:class:`TrainInteractions`) and BPR negative sampling on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from tokenrec_pipeline.evaluation.ranking import split_sizes


@dataclass(frozen=True)
class TrainInteractions:
    """Training (user, item) pairs of the seen users plus the id-space sizes."""

    users: np.ndarray
    items: np.ndarray
    n_seen_users: int
    n_items: int

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError(f"{len(self.users)} train users but {len(self.items)} train items; need pairs.")
        if len(self.users) and (self.users.min() < 0 or self.users.max() >= self.n_seen_users):
            raise ValueError(f"train user ids must lie in [0, n_seen_users={self.n_seen_users}).")
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise ValueError(f"train item ids must lie in [0, n_items={self.n_items}).")

    @property
    def user_degree(self) -> np.ndarray:
        """Number of train items per seen user."""
        return np.bincount(self.users, minlength=self.n_seen_users).astype(np.int64)

    @property
    def item_degree(self) -> np.ndarray:
        """Number of train users per item (= Pop's counts)."""
        return item_popularity(self.items, self.n_items)


def train_interactions_from_splits(interactions_split: pd.DataFrame) -> TrainInteractions:
    """The ``split == "train"`` rows of the preprocessing output as arrays, with the id-space sizes."""
    sizes = split_sizes(interactions_split)
    train = interactions_split[interactions_split["split"].to_numpy() == "train"]
    return TrainInteractions(
        users=train["user_id"].to_numpy(dtype=np.int64),
        items=train["item_id"].to_numpy(dtype=np.int64),
        n_seen_users=sizes.n_seen_users,
        n_items=sizes.n_items,
    )


def item_popularity(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """Exact number of TRAIN interactions per item (valid / test / unseen rows must not be passed)."""
    return np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items).astype(np.int64)


def positive_keys(train_users: np.ndarray | Tensor, train_items: np.ndarray | Tensor, n_items: int) -> Tensor:
    """Sorted unique ``user * n_items + item`` keys of the training positives (for membership tests)."""
    # torch.tensor copies: pandas 3 hands out read-only arrays, which torch.as_tensor warns about.
    u = torch.tensor(np.asarray(train_users, dtype=np.int64))
    i = torch.tensor(np.asarray(train_items, dtype=np.int64))
    return torch.unique(u * n_items + i)  # unique() returns sorted values


def sample_bpr_negatives(
    users: Tensor,
    pos_keys: Tensor,
    n_items: int,
    generator: torch.Generator,
    max_rounds: int = 1000,
) -> Tensor:
    """One uniform negative item per entry of ``users``, never a training positive of that user.

    Vectorised rejection sampling: draw all, then redraw only the rejected entries until none is
    left (expected rounds ~ 1 / (1 - max density), tiny for recommendation data).
    """
    users = users.to(torch.int64).cpu()
    negatives = torch.randint(0, n_items, (len(users),), generator=generator)
    todo = torch.arange(len(users))
    for _ in range(max_rounds):
        keys = users[todo] * n_items + negatives[todo]
        pos = torch.searchsorted(pos_keys, keys).clamp_(max=max(len(pos_keys) - 1, 0))
        rejected = pos_keys[pos] == keys if len(pos_keys) else torch.zeros(len(todo), dtype=torch.bool)
        todo = todo[rejected]
        if len(todo) == 0:
            return negatives
        negatives[todo] = torch.randint(0, n_items, (len(todo),), generator=generator)
    raise RuntimeError(
        f"negative sampling did not finish after {max_rounds} rounds: some user has (almost) every item as a "
        "training positive, so no negative exists. Drop such users in preprocessing."
    )
