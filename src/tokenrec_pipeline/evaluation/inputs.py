"""What the evaluator reads: :class:`EvalInputs` (users, their input histories and targets) built from the
``interactions_split`` table by :func:`eval_inputs_from_splits`, and the split checks shared with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "valid", "test", "unseen_history", "unseen_test", "test_history")
"""Values of the ``split`` column of ``interactions_split`` (``test_history``: seen users' rows that are
only test-time input, written by the global temporal split)."""

Histories = tuple[np.ndarray, np.ndarray] | Sequence[np.ndarray]
"""Either a CSR tuple ``(indptr, indices)`` (row i = ``indices[indptr[i]:indptr[i+1]]``) or a list with one
item array per user."""


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalInputs:
    """Users to evaluate, their input histories (CSR) and one target item each, row-aligned."""

    users: np.ndarray
    history_indptr: np.ndarray
    history_indices: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.targets) != n:
            raise ValueError(f"EvalInputs: {n} users but {len(self.targets)} targets; need one target per user.")
        if len(self.history_indptr) != n + 1:
            raise ValueError(
                f"EvalInputs: history_indptr has length {len(self.history_indptr)}, expected n_users + 1 = {n + 1}."
            )

    @property
    def histories(self) -> tuple[np.ndarray, np.ndarray]:
        """The histories as a CSR pair ``(indptr, indices)``."""
        return self.history_indptr, self.history_indices

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def from_arrays(
        cls, users: np.ndarray | Sequence[int], histories: Histories, targets: np.ndarray | Sequence[int]
    ) -> EvalInputs:
        """Build from a user array, histories (CSR pair or list of arrays) and a target array."""
        users_arr = np.asarray(users, dtype=np.int64)
        indptr, indices = histories_to_csr(histories, len(users_arr))
        return cls(users_arr, indptr, indices, np.asarray(targets, dtype=np.int64))


def histories_to_csr(histories: Histories, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise histories to int64 CSR ``(indptr, indices)``.

    A *tuple* of two arrays is read as CSR ``(indptr, indices)``; any other sequence (a list, an
    object array, a pandas Series) as one item array per user.
    """
    if isinstance(histories, tuple) and len(histories) == 2:
        indptr = np.asarray(histories[0], dtype=np.int64)
        indices = np.asarray(histories[1], dtype=np.int64)
        if (
            indptr.ndim != 1
            or len(indptr) != n_rows + 1
            or indptr[0] != 0
            or indptr[-1] != len(indices)
            or np.any(np.diff(indptr) < 0)
        ):
            raise ValueError(
                f"histories given as a tuple are read as CSR (indptr, indices): indptr must start at 0, be "
                f"non-decreasing, have length n_users + 1 = {n_rows + 1} and end at len(indices). "
                "Pass a list for one item array per user."
            )
        return indptr, indices
    if len(histories) != n_rows:
        raise ValueError(
            f"histories: got {len(histories)} rows for {n_rows} users; pass one item array per user "
            "or a CSR tuple (indptr, indices)."
        )
    arrays = [np.asarray(h, dtype=np.int64).ravel() for h in histories]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=indptr[1:])
    indices = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return indptr, indices


def _check_split_frame(interactions_split: pd.DataFrame) -> None:
    missing = {"user_id", "item_id", "split"} - set(interactions_split.columns)
    if missing:
        raise ValueError(
            f"interactions_split lacks column(s) {sorted(missing)}; it must have user_id, item_id, timestamp, split "
            "(the output of the preprocessing stage)."
        )
    unknown = set(interactions_split["split"].unique()) - set(SPLIT_NAMES)
    if unknown:
        raise ValueError(f"interactions_split['split'] has unknown value(s) {sorted(unknown)}; expected {SPLIT_NAMES}.")


@dataclass(frozen=True)
class SplitSizes:
    """Id-space sizes of a split dataset: seen users are ``0..n_seen_users-1``, unseen the rest."""

    n_seen_users: int
    n_users: int
    n_items: int


def split_sizes(interactions_split: pd.DataFrame) -> SplitSizes:
    """Sizes of the contiguous id spaces; items count every split so all models share one item space."""
    _check_split_frame(interactions_split)
    seen_mask = interactions_split["split"].isin(["train", "valid", "test", "test_history"]).to_numpy()
    users = interactions_split["user_id"].to_numpy()
    n_seen = int(users[seen_mask].max()) + 1 if seen_mask.any() else 0
    n_users = int(users.max()) + 1 if len(users) else 0
    n_items = int(interactions_split["item_id"].max()) + 1 if len(users) else 0
    return SplitSizes(n_seen_users=n_seen, n_users=n_users, n_items=n_items)


def _group_csr(users: np.ndarray, items: np.ndarray, row_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of ``items`` grouped by ``users`` for the rows ``row_users`` (stable: keeps input order)."""
    order = np.argsort(users, kind="stable")
    su, si = users[order], items[order]
    starts = np.searchsorted(su, row_users, side="left")
    ends = np.searchsorted(su, row_users, side="right")
    lengths = ends - starts
    indptr = np.zeros(len(row_users) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    # Gather each row's slice without a Python loop: position of element j of row r is starts[r] + j.
    row_of = np.repeat(np.arange(len(row_users)), lengths)
    offset_in_row = np.arange(indptr[-1]) - indptr[:-1][row_of]
    indices = si[starts[row_of] + offset_in_row].astype(np.int64)
    return indptr, indices


def eval_inputs_from_splits(
    interactions_split: pd.DataFrame,
    user_group: Literal["seen", "unseen"],
    stage: Literal["valid", "test"],
) -> EvalInputs:
    """Build the protocol's evaluation inputs from the preprocessing output.

    * seen / valid: history = train items, target = valid item (model selection);
    * seen / test: history = train + valid (+ test_history) items, target = test item;
    * unseen / test: history = unseen_history items, target = unseen_test item.

    Users are returned in increasing id order. Users without a target row are skipped.
    """
    _check_split_frame(interactions_split)
    if user_group == "seen":
        history_splits = ["train"] if stage == "valid" else ["train", "valid", "test_history"]
        target_split = stage
    elif user_group == "unseen":
        if stage != "test":
            raise ValueError(
                "unseen users have only a test target (model selection uses seen users' valid items); use stage='test'."
            )
        history_splits, target_split = ["unseen_history"], "unseen_test"
    else:
        raise ValueError(f"user_group must be 'seen' or 'unseen', got {user_group!r}.")

    split = interactions_split["split"].to_numpy()
    users = interactions_split["user_id"].to_numpy(dtype=np.int64)
    items = interactions_split["item_id"].to_numpy(dtype=np.int64)

    target_rows = split == target_split
    target_users, target_items = users[target_rows], items[target_rows]
    order = np.argsort(target_users, kind="stable")
    target_users, target_items = target_users[order], target_items[order]
    if len(np.unique(target_users)) != len(target_users):
        raise ValueError(
            f"interactions_split has more than one '{target_split}' row for some users; the protocol needs exactly one."
        )
    hist_rows = np.isin(split, history_splits)
    indptr, indices = _group_csr(users[hist_rows], items[hist_rows], target_users)
    return EvalInputs(target_users, indptr, indices, target_items)
