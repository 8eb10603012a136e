"""Implicit feedback, k-core fixed point, protocol splits, determinism, statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tokenrec_pipeline.data.preprocess import (
    PreprocessingError,
    check_split_integrity,
    dataset_statistics,
    filter_k_core,
    split_leave_one_out,
    to_implicit_feedback,
)
from tokenrec_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_interactions


def _log(seed: int = 0, n_users: int = 300) -> pd.DataFrame:
    frame = generate_synthetic_interactions(SyntheticConfig(n_users=n_users, n_items=200, n_groups=5), seed)
    return frame.astype({"user": str, "item": str})


def test_implicit_keeps_first_timestamp_and_threshold():
    frame = pd.DataFrame({"user": ["a", "a", "a", "b"], "item": ["x", "x", "y", "x"],
                          "timestamp": [5, 1, 3, 2], "rating": [5.0, 2.0, 4.0, 1.0]})
    implicit = to_implicit_feedback(frame)
    assert implicit[["user", "item", "timestamp"]].values.tolist() == [["a", "x", 1], ["a", "y", 3], ["b", "x", 2]]
    liked = to_implicit_feedback(frame, rating_threshold=4)
    assert liked[["user", "item", "timestamp"]].values.tolist() == [["a", "y", 3], ["a", "x", 5]]


def test_ties_keep_file_order():
    frame = pd.DataFrame({"user": ["a"] * 3, "item": ["z", "x", "y"], "timestamp": [7, 7, 7], "rating": np.nan})
    assert to_implicit_feedback(frame)["item"].tolist() == ["z", "x", "y"]


def test_k_core_is_a_fixed_point():
    core = filter_k_core(to_implicit_feedback(_log()), 5)
    assert core.groupby("user").size().min() >= 5 and core.groupby("item").size().min() >= 5
    assert len(filter_k_core(core, 5)) == len(core)


def test_k_core_to_nothing_is_an_error():
    frame = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "timestamp": [1, 2], "rating": np.nan})
    with pytest.raises(PreprocessingError, match="k_core"):
        filter_k_core(frame, 5)


def test_splits_follow_the_protocol():
    core = filter_k_core(to_implicit_feedback(_log()), 5)
    split, user_map, item_map = split_leave_one_out(core, 0.1, seed=3)
    n_seen = int((user_map["user_group"] == "seen").sum())
    assert n_seen == 270 and len(user_map) == 300
    assert split["item_id"].max() == len(item_map) - 1 and split["user_id"].max() == len(user_map) - 1
    # test item is each seen user's chronologically last; valid the one before
    original = core.merge(user_map, left_on="user", right_on="original_user")
    last = original.sort_values("timestamp", kind="stable").groupby("user_id").tail(1).set_index("user_id")
    tests = split[split["split"].isin(["test", "unseen_test"])].set_index("user_id")
    originals = item_map.set_index("item_id")["original_item"]
    assert (originals.loc[tests.sort_index()["item_id"]].to_numpy() == last.sort_index()["item"].to_numpy()).all()
    # no (user, item) in two splits; no unseen user in train/valid/test
    assert not split.duplicated(["user_id", "item_id"]).any()
    seen_rows = split[split["split"].isin(["train", "valid", "test"])]
    assert seen_rows["user_id"].max() < n_seen
    assert split.loc[split["split"].str.startswith("unseen"), "user_id"].min() >= n_seen
    assert (split[split["split"] == "valid"].groupby("user_id").size() == 1).all()
    # popularity counts training rows only
    train_counts = split[split["split"] == "train"]["item_id"].value_counts()
    assert (item_map.set_index("item_id").loc[train_counts.index, "train_count"] == train_counts).all()


def test_same_seed_same_split_other_seed_other_unseen_users():
    core = filter_k_core(to_implicit_feedback(_log()), 5)
    first, users_a, _ = split_leave_one_out(core, 0.1, seed=7)
    second, users_b, _ = split_leave_one_out(core, 0.1, seed=7)
    pd.testing.assert_frame_equal(first, second)
    _, users_c, _ = split_leave_one_out(core, 0.1, seed=8)
    assert not users_a.equals(users_c)


def test_integrity_check_catches_leakage():
    split = pd.DataFrame({"user_id": [0, 0, 0], "item_id": [1, 2, 1], "timestamp": [1, 2, 3],
                          "split": ["train", "valid", "test"]})
    with pytest.raises(PreprocessingError, match="Leakage"):
        check_split_integrity(split)


def test_statistics_count_every_split():
    core = filter_k_core(to_implicit_feedback(_log()), 5)
    split, _, _ = split_leave_one_out(core, 0.1, seed=0)
    stats = dataset_statistics(split).set_index("scope")
    assert stats.loc["all", "interactions"] == len(core)
    assert stats.loc[["train", "valid", "test", "unseen_history", "unseen_test"], "interactions"].sum() == len(core)
    assert stats.loc["test", "users"] == 270 and stats.loc["unseen_test", "users"] == 30
