"""Implicit feedback, iterative k-core, contiguous ids and the protocol's chronological splits.

All functions are vectorised pandas/numpy (no per-row Python loops) and pure: they take and
return DataFrames. The split layout every later stage reads (``interactions_split``):

=============== =====================================================================
column          meaning
=============== =====================================================================
user_id         contiguous int: seen users ``0..n_seen-1``, unseen users after them
item_id         contiguous int ``0..n_items-1`` over every item that survived k-core
timestamp       int64 (Unix seconds, or the position in the user's sequence)
split           ``train`` / ``valid`` / ``test`` for seen users (leave-one-out by time),
                ``unseen_history`` / ``unseen_test`` for users held out of all training
=============== =====================================================================

Rows are ordered by user, then time (ties keep file order).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test", "unseen_history", "unseen_test")


class PreprocessingError(ValueError):
    """Preprocessing cannot produce a usable dataset with these parameters."""


def chronological_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Order rows by user, then timestamp; ties keep their current (file) order."""
    order = np.arange(len(frame))
    return (
        frame.assign(_order=order)
        .sort_values(["user", "timestamp", "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def to_implicit_feedback(interactions: pd.DataFrame, rating_threshold: float | None = None) -> pd.DataFrame:
    """Keep interactions with ``rating >= rating_threshold`` (all when None), one row per
    (user, item) at its first timestamp, ordered chronologically per user."""
    frame = interactions
    if rating_threshold is not None:
        if frame["rating"].isna().all():
            raise PreprocessingError(
                "preprocessing.rating_threshold is set but this dataset has no ratings; set it to null."
            )
        frame = frame[frame["rating"] >= rating_threshold]
        if frame.empty:
            raise PreprocessingError(
                f"No interaction has rating >= {rating_threshold} (preprocessing.rating_threshold)."
            )
    frame = chronological_order(frame)
    return frame.drop_duplicates(["user", "item"], keep="first").reset_index(drop=True)


def filter_k_core(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively drop users and items with fewer than ``k`` interactions until stable.

    The result is a fixed point: every user and every item in it has at least ``k`` rows.
    """
    if k < 1:
        return frame
    rounds = 0
    while True:
        rounds += 1
        user_counts = frame["user"].map(frame["user"].value_counts())
        item_counts = frame["item"].map(frame["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            break
        frame = frame[keep]
        if frame.empty:
            raise PreprocessingError(
                f"{k}-core filtering removed every interaction; lower preprocessing.k_core or use a denser dataset."
            )
    logger.info("%d-core reached after %d round(s): %d interactions", k, rounds, len(frame))
    return frame.reset_index(drop=True)


def _sorted_unique(values: pd.Series) -> np.ndarray:
    """Unique ids, numerically sorted when they are all integers (so '10' follows '9')."""
    unique = pd.unique(values)
    numeric = pd.to_numeric(pd.Series(unique), errors="coerce")
    if numeric.notna().all():
        return unique[np.argsort(numeric.to_numpy(), kind="stable")]
    return np.sort(unique.astype(str))


def split_leave_one_out(
    frame: pd.DataFrame, unseen_user_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Assign contiguous ids and the protocol's chronological splits.

    A seeded ``unseen_user_fraction`` of users is held out of all training: their last item is
    ``unseen_test`` and the rest ``unseen_history``. For every other (seen) user, the last item is
    ``test``, the second to last ``valid`` and the rest ``train``. Seen users with fewer than
    three interactions (possible only when k-core < 3) are dropped with a warning.

    Returns:
        (interactions_split, user_map, item_map). ``user_map``: user_id, original_user,
        user_group (seen/unseen). ``item_map``: item_id, original_item, train_count.
    """
    if not 0.0 <= unseen_user_fraction < 1.0:
        raise PreprocessingError(
            f"preprocessing.unseen_user_fraction={unseen_user_fraction} must be in [0, 1)."
        )
    frame = chronological_order(frame)
    lengths = frame.groupby("user", sort=False)["item"].transform("size")
    too_short = lengths < 3
    if too_short.any():
        logger.warning("Dropping %d users with fewer than 3 interactions.", frame.loc[too_short, "user"].nunique())
        frame = frame[~too_short].reset_index(drop=True)
    if frame.empty:
        raise PreprocessingError("No user has the 3 interactions a train/valid/test split needs.")

    users = _sorted_unique(frame["user"])
    rng = np.random.default_rng(seed)
    n_unseen = int(round(unseen_user_fraction * len(users)))
    unseen_mask = np.zeros(len(users), dtype=bool)
    unseen_mask[rng.choice(len(users), size=n_unseen, replace=False)] = True
    ordered_users = np.concatenate([users[~unseen_mask], users[unseen_mask]])
    user_ids = pd.Series(np.arange(len(ordered_users)), index=ordered_users)
    n_seen = int((~unseen_mask).sum())

    items = _sorted_unique(frame["item"])
    item_ids = pd.Series(np.arange(len(items)), index=items)

    out = pd.DataFrame(
        {
            "user_id": frame["user"].map(user_ids).to_numpy(np.int64),
            "item_id": frame["item"].map(item_ids).to_numpy(np.int64),
            "timestamp": frame["timestamp"].to_numpy(np.int64),
        }
    )
    from_end = out.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    is_unseen = out["user_id"].to_numpy() >= n_seen
    split = np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train")).astype(object)
    split[is_unseen] = np.where(from_end[is_unseen] == 0, "unseen_test", "unseen_history")
    out["split"] = split
    out = out.sort_values(["user_id"], kind="stable").reset_index(drop=True)

    user_map = pd.DataFrame(
        {
            "user_id": np.arange(len(ordered_users), dtype=np.int64),
            "original_user": ordered_users.astype(str),
            "user_group": np.where(np.arange(len(ordered_users)) < n_seen, "seen", "unseen"),
        }
    )
    train_count = np.bincount(out.loc[out["split"] == "train", "item_id"], minlength=len(items))
    item_map = pd.DataFrame(
        {"item_id": np.arange(len(items), dtype=np.int64), "original_item": items.astype(str),
         "train_count": train_count.astype(np.int64)}
    )
    check_split_integrity(out)
    return out, user_map, item_map


def check_split_integrity(split: pd.DataFrame) -> None:
    """Raise if the split leaks: a (user, item) pair in two splits, an unseen user with train
    rows, a seen user whose test item is not their chronologically last, or a missing target."""
    if split.duplicated(["user_id", "item_id"]).any():
        raise PreprocessingError("Leakage: a (user, item) pair appears more than once across splits.")
    unseen_users = set(split.loc[split["split"].str.startswith("unseen"), "user_id"])
    seen_users = set(split.loc[~split["split"].str.startswith("unseen"), "user_id"])
    if unseen_users & seen_users:
        raise PreprocessingError("Leakage: an unseen user has train/valid/test rows.")
    last = split.groupby("user_id", sort=False).tail(1)
    if not last["split"].isin(["test", "unseen_test"]).all():
        raise PreprocessingError("Split error: some user's last interaction is not their test target.")
    per_user = split.groupby("user_id")["split"]
    targets = split[split["split"].isin(["test", "unseen_test"])].groupby("user_id").size()
    if len(targets) != per_user.ngroups or (targets != 1).any():
        raise PreprocessingError("Split error: every user needs exactly one test target.")


def dataset_statistics(split: pd.DataFrame) -> pd.DataFrame:
    """Users, items, interactions, density and history-length summary per split and overall."""
    rows = []
    scopes = [("all", split)] + [(name, split[split["split"] == name]) for name in SPLITS]
    n_items_total = split["item_id"].nunique()
    for scope, part in scopes:
        lengths = part.groupby("user_id").size()
        n_users, n_items = part["user_id"].nunique(), part["item_id"].nunique()
        rows.append(
            {
                "scope": scope,
                "users": n_users,
                "items": n_items,
                "interactions": len(part),
                "density": len(part) / max(n_users * n_items_total, 1),
                "mean_history": float(lengths.mean()) if len(lengths) else 0.0,
                "median_history": float(lengths.median()) if len(lengths) else 0.0,
            }
        )
    return pd.DataFrame(rows)
