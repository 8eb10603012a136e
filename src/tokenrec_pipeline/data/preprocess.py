"""Implicit feedback, iterative k-core, contiguous ids and the protocol's chronological splits.

All functions are vectorised pandas/numpy (no per-row Python loops) and pure: they take and
return DataFrames. The split layout every later stage reads (``interactions_split``):

=============== =====================================================================
column          meaning
=============== =====================================================================
user_id         contiguous int: seen users ``0..n_seen-1``, unseen users after them
item_id         contiguous int ``0..n_items-1`` over every item that survived k-core
timestamp       int64 (Unix seconds, or the position in the user's sequence)
split           ``train`` / ``valid`` / ``test`` for seen users, ``test_history`` for seen
                users' rows that are only test-time input (global temporal split only),
                ``unseen_history`` / ``unseen_test`` for users held out of all training
=============== =====================================================================

Rows are ordered by user, then time (ties keep file order).

Two split strategies (``preprocessing.split_strategy``):

* ``leave_one_out`` (default, the paper's): per user, last item -> test, second to last -> valid.
* ``global_temporal``: two global timestamp cut-offs ``c1 < c2`` at quantiles of all timestamps.
  Rows before ``c1`` are ``train``; a user's first row in ``[c1, c2)`` is their ``valid`` target
  (history: their train rows), their later rows in that window are ``test_history``; their first
  row at or after ``c2`` is their ``test`` target (history: every earlier row). Nothing a model is
  trained on is later than any target, for any user. Users without a row in a window are not
  evaluated there; rows after a user's last target are never used and are dropped.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test", "unseen_history", "unseen_test", "test_history")
SPLIT_STRATEGIES = ("leave_one_out", "global_temporal")


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


def _check_unseen_fraction(unseen_user_fraction: float) -> None:
    if not 0.0 <= unseen_user_fraction < 1.0:
        raise PreprocessingError(
            f"preprocessing.unseen_user_fraction={unseen_user_fraction} must be in [0, 1)."
        )


def _draw_unseen(candidates: np.ndarray, unseen_user_fraction: float, seed: int) -> np.ndarray:
    """Seeded boolean mask over ``candidates`` (sorted user labels): the users held out of training."""
    rng = np.random.default_rng(seed)
    n_unseen = int(round(unseen_user_fraction * len(candidates)))
    mask = np.zeros(len(candidates), dtype=bool)
    mask[rng.choice(len(candidates), size=n_unseen, replace=False)] = True
    return mask


def _assign_ids(
    frame: pd.DataFrame, split: np.ndarray, seen_users: np.ndarray, unseen_users: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Contiguous ids (seen users first, then unseen; items over ``frame``) for a chronologically
    ordered ``frame`` whose rows all belong to ``seen_users`` or ``unseen_users``, labelled ``split``."""
    ordered_users = np.concatenate([seen_users, unseen_users])
    user_ids = pd.Series(np.arange(len(ordered_users)), index=ordered_users)
    items = _sorted_unique(frame["item"])
    item_ids = pd.Series(np.arange(len(items)), index=items)
    out = pd.DataFrame(
        {
            "user_id": frame["user"].map(user_ids).to_numpy(np.int64),
            "item_id": frame["item"].map(item_ids).to_numpy(np.int64),
            "timestamp": frame["timestamp"].to_numpy(np.int64),
            "split": np.asarray(split, dtype=object),
        }
    )
    out = out.sort_values(["user_id"], kind="stable").reset_index(drop=True)
    user_map = pd.DataFrame(
        {
            "user_id": np.arange(len(ordered_users), dtype=np.int64),
            "original_user": ordered_users.astype(str),
            "user_group": np.where(np.arange(len(ordered_users)) < len(seen_users), "seen", "unseen"),
        }
    )
    train_count = np.bincount(out.loc[out["split"] == "train", "item_id"], minlength=len(items))
    item_map = pd.DataFrame(
        {"item_id": np.arange(len(items), dtype=np.int64), "original_item": items.astype(str),
         "train_count": train_count.astype(np.int64)}
    )
    return out, user_map, item_map


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
    _check_unseen_fraction(unseen_user_fraction)
    frame = chronological_order(frame)
    lengths = frame.groupby("user", sort=False)["item"].transform("size")
    too_short = lengths < 3
    if too_short.any():
        logger.warning("Dropping %d users with fewer than 3 interactions.", frame.loc[too_short, "user"].nunique())
        frame = frame[~too_short].reset_index(drop=True)
    if frame.empty:
        raise PreprocessingError("No user has the 3 interactions a train/valid/test split needs.")

    users = _sorted_unique(frame["user"])
    unseen_mask = _draw_unseen(users, unseen_user_fraction, seed)
    from_end = frame.groupby("user", sort=False).cumcount(ascending=False).to_numpy()
    is_unseen = frame["user"].isin(users[unseen_mask]).to_numpy()
    split = np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train")).astype(object)
    split[is_unseen] = np.where(from_end[is_unseen] == 0, "unseen_test", "unseen_history")
    out, user_map, item_map = _assign_ids(frame, split, users[~unseen_mask], users[unseen_mask])
    check_split_integrity(out)
    return out, user_map, item_map


def temporal_cutoffs(
    timestamps: np.ndarray | pd.Series, quantiles: tuple[float, float] | list[float]
) -> tuple[float, float]:
    """The two global cut-offs ``(c1, c2)``: the given quantiles of all timestamps.

    Raises when the quantiles are not ``0 < q1 < q2 < 1`` or when ties make a window empty.
    """
    q = [float(x) for x in quantiles]
    if len(q) != 2 or not 0.0 < q[0] < q[1] < 1.0:
        raise PreprocessingError(
            f"preprocessing.temporal_cutoffs={list(quantiles)} must be two quantiles 0 < q1 < q2 < 1 "
            "(e.g. [0.8, 0.9])."
        )
    ts = np.asarray(timestamps, dtype=np.int64)
    c1, c2 = (float(c) for c in np.quantile(ts, q))
    windows = np.searchsorted([c1, c2], ts, side="right")  # 0: ts < c1, 1: c1 <= ts < c2, 2: ts >= c2
    counts = np.bincount(windows, minlength=3)
    if (counts == 0).any():
        raise PreprocessingError(
            f"preprocessing.temporal_cutoffs={q} give cut-offs {c1:.0f} / {c2:.0f} with an empty window "
            f"(train / validation / test rows: {counts.tolist()}); the timestamps are too tied for these "
            "quantiles: move them apart or use split_strategy: leave_one_out."
        )
    return c1, c2


def split_global_temporal(
    frame: pd.DataFrame, quantiles: tuple[float, float] | list[float], unseen_user_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Global temporal split (no cross-user future leakage); same outputs as :func:`split_leave_one_out`.

    With ``(c1, c2) = temporal_cutoffs(timestamps, quantiles)``: rows before ``c1`` are ``train``;
    each user's first row in ``[c1, c2)`` is their ``valid`` target (history = their train rows) and
    their later rows there ``test_history``; their first row at or after ``c2`` is their ``test``
    target (history = train + valid + test_history). Users without a row in a window have no target
    there. Rows after a user's test target, and validation-window rows of users without a test target,
    are input to nothing and are dropped.

    Unseen users: a seeded ``unseen_user_fraction`` of the users that have a test target and at least
    one earlier row is held out of all training; their first row at or after ``c2`` is
    ``unseen_test``, every earlier row ``unseen_history``. Other users without any row before ``c1``
    have nothing to train on and are dropped (logged).
    """
    _check_unseen_fraction(unseen_user_fraction)
    frame = chronological_order(frame)
    c1, c2 = temporal_cutoffs(frame["timestamp"], quantiles)
    window = np.searchsorted([c1, c2], frame["timestamp"].to_numpy(np.int64), side="right")
    # Integer user codes: per-user flags by bincount, no string comparisons over rows.
    codes, labels = pd.factorize(frame["user"])
    first_in_window = pd.Series(window).groupby(codes * 3 + window, sort=False).cumcount().to_numpy() == 0
    has_train_u, has_valid_u, has_test_u = (
        np.bincount(codes[window == w], minlength=len(labels)) > 0 for w in range(3)
    )
    # A user with a test row has a row before it unless every row is in the test window.
    candidates = _sorted_unique(pd.Series(labels[has_test_u & (has_train_u | has_valid_u)]))
    unseen_users = candidates[_draw_unseen(candidates, unseen_user_fraction, seed)]
    unseen_u = pd.Index(labels).isin(unseen_users)
    seen_users = _sorted_unique(pd.Series(labels[has_train_u & ~unseen_u]))
    users = labels
    is_unseen, is_seen, has_test = unseen_u[codes], (has_train_u & ~unseen_u)[codes], has_test_u[codes]

    split = np.full(len(frame), None, dtype=object)
    split[window == 0] = "train"
    split[(window == 1) & first_in_window] = "valid"
    split[(window == 1) & ~first_in_window & has_test] = "test_history"
    split[(window == 2) & first_in_window] = "test"
    split[is_unseen] = np.where((window[is_unseen] == 2) & first_in_window[is_unseen], "unseen_test", None)
    split[is_unseen & (window < 2)] = "unseen_history"
    keep = (split != None) & (is_unseen | is_seen)  # noqa: E711
    n_dropped_users = len(users) - len(seen_users) - len(unseen_users)
    if n_dropped_users:
        logger.info("global_temporal: dropping %d users with no interaction before the first cut-off.", n_dropped_users)
    if not len(seen_users):
        raise PreprocessingError("global_temporal: no user has an interaction before the first cut-off.")
    logger.info(
        "global_temporal cut-offs %.0f / %.0f: %d train, %d valid, %d test, %d test_history rows; %d rows after "
        "a user's last target dropped", c1, c2, (split[keep] == "train").sum(), (split[keep] == "valid").sum(),
        (split[keep] == "test").sum(), (split[keep] == "test_history").sum(), int((~keep).sum()),
    )
    out, user_map, item_map = _assign_ids(
        frame[keep].reset_index(drop=True), split[keep], seen_users, unseen_users
    )
    check_split_integrity(out, strategy="global_temporal")
    return out, user_map, item_map


def split_by_strategy(
    frame: pd.DataFrame, strategy: str, unseen_user_fraction: float, seed: int,
    temporal_quantiles: tuple[float, float] | list[float] = (0.8, 0.9),
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """:func:`split_leave_one_out` or :func:`split_global_temporal` by name (``preprocessing.split_strategy``)."""
    if strategy == "leave_one_out":
        return split_leave_one_out(frame, unseen_user_fraction, seed)
    if strategy == "global_temporal":
        return split_global_temporal(frame, temporal_quantiles, unseen_user_fraction, seed)
    raise PreprocessingError(
        f"preprocessing.split_strategy={strategy!r} is not one of {list(SPLIT_STRATEGIES)}."
    )


def check_split_integrity(split: pd.DataFrame, strategy: str = "leave_one_out") -> None:
    """Raise if the split leaks or breaks the protocol.

    Always: a (user, item) pair in two splits, an unseen user with seen-user rows, more than one
    target of a kind per user, an unknown ``split`` value. ``leave_one_out``: every user's last
    row is their one test target. ``global_temporal``: every training row is earlier than every
    target or test-time history row, every validation-window row earlier than every test target,
    no row after a user's test target, ``test_history`` only for users with a test target, and a
    seen user with a target has training rows.
    """
    unknown = set(split["split"].unique()) - set(SPLITS)
    if unknown:
        raise PreprocessingError(f"Split error: unknown split value(s) {sorted(map(str, unknown))}; expected {SPLITS}.")
    if split.duplicated(["user_id", "item_id"]).any():
        raise PreprocessingError("Leakage: a (user, item) pair appears more than once across splits.")
    unseen_users = set(split.loc[split["split"].str.startswith("unseen"), "user_id"])
    seen_users = set(split.loc[~split["split"].str.startswith("unseen"), "user_id"])
    if unseen_users & seen_users:
        raise PreprocessingError("Leakage: an unseen user has train/valid/test rows.")
    targets = split[split["split"].isin(["valid", "test", "unseen_test"])]
    if targets.duplicated(["user_id", "split"]).any():
        raise PreprocessingError("Split error: some user has more than one target of the same split.")
    last = split.groupby("user_id", sort=False).tail(1)
    if strategy == "leave_one_out":
        if not last["split"].isin(["test", "unseen_test"]).all():
            raise PreprocessingError("Split error: some user's last interaction is not their test target.")
        n_tests = split["split"].isin(["test", "unseen_test"]).sum()
        if n_tests != split["user_id"].nunique():
            raise PreprocessingError("Split error: every user needs exactly one test target.")
        return
    if strategy != "global_temporal":
        raise PreprocessingError(f"split strategy {strategy!r} is not one of {list(SPLIT_STRATEGIES)}.")
    ts = split["timestamp"].to_numpy()
    kind = split["split"].to_numpy()
    train_ts = ts[kind == "train"]
    later = ts[np.isin(kind, ["valid", "test_history", "test", "unseen_test"])]
    if len(train_ts) and len(later) and train_ts.max() >= later.min():
        raise PreprocessingError(
            "Leakage: a training interaction is not earlier than some validation/test row (global_temporal)."
        )
    middle = ts[np.isin(kind, ["valid", "test_history"])]
    tests = ts[np.isin(kind, ["test", "unseen_test"])]
    if len(middle) and len(tests) and middle.max() >= tests.min():
        raise PreprocessingError(
            "Leakage: a validation-window row is not earlier than some test target (global_temporal)."
        )
    users_with_test = set(split.loc[split["split"].isin(["test", "unseen_test"]), "user_id"])
    if not set(last.loc[last["split"].isin(["test", "unseen_test"]), "user_id"]) == users_with_test:
        raise PreprocessingError("Split error: some user has rows after their test target.")
    if not set(split.loc[split["split"] == "test_history", "user_id"]) <= users_with_test:
        raise PreprocessingError("Split error: test_history rows for a user without a test target.")
    evaluated = set(targets.loc[targets["split"].isin(["valid", "test"]), "user_id"])
    if not evaluated <= set(split.loc[split["split"] == "train", "user_id"]):
        raise PreprocessingError("Split error: a seen user with a target has no training interaction.")


def dataset_statistics(split: pd.DataFrame) -> pd.DataFrame:
    """Users, items, interactions, density and history-length summary per split and overall."""
    rows = []
    # test_history exists only under global_temporal; leave-one-out statistics keep their five scopes.
    present = set(split["split"].unique())
    names = [name for name in SPLITS if name != "test_history" or name in present]
    scopes = [("all", split)] + [(name, split[split["split"] == name]) for name in names]
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
