"""Implicit feedback, k-core fixed point, protocol splits, determinism, statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tokenrec_pipeline.data.preprocess import (
    PreprocessingError,
    check_split_integrity,
    chronological_order,
    dataset_statistics,
    filter_k_core,
    split_by_strategy,
    split_global_temporal,
    split_leave_one_out,
    temporal_cutoffs,
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


# ---------------------------------------------------------------- global temporal split

def _temporal(quantiles=(0.8, 0.9), fraction=0.1, seed=0):
    core = filter_k_core(to_implicit_feedback(_log()), 5)
    return core, split_global_temporal(core, quantiles, fraction, seed)


def test_temporal_training_rows_are_before_the_first_cutoff_and_targets_after_theirs():
    core, (split, user_map, item_map) = _temporal()
    c1, c2 = temporal_cutoffs(core["timestamp"], (0.8, 0.9))
    assert c1 == np.quantile(core["timestamp"], 0.8) and c2 == np.quantile(core["timestamp"], 0.9)
    by = split.groupby("split")["timestamp"]
    assert by.max()["train"] < c1
    assert by.min()["valid"] >= c1 and by.max()["valid"] < c2
    assert by.min()["test"] >= c2 and by.min()["unseen_test"] >= c2
    assert by.min()["test_history"] >= c1 and by.max()["test_history"] < c2
    assert set(split["split"]) == {"train", "valid", "test", "test_history", "unseen_history", "unseen_test"}
    # popularity (train_count) sees training-window rows only
    train_counts = split[split["split"] == "train"]["item_id"].value_counts().reindex(item_map["item_id"], fill_value=0)
    assert (item_map["train_count"].to_numpy() == train_counts.to_numpy()).all()


def test_temporal_targets_are_each_users_first_row_of_their_window():
    core, (split, user_map, item_map) = _temporal()
    c1, c2 = temporal_cutoffs(core["timestamp"], (0.8, 0.9))
    users = user_map.set_index("user_id")["original_user"]
    items = item_map.set_index("item_id")["original_item"]
    ordered = chronological_order(core)
    for name, lo, hi in (("valid", c1, c2), ("test", c2, np.inf), ("unseen_test", c2, np.inf)):
        rows = split[split["split"] == name]
        assert rows["user_id"].is_unique and len(rows) > 0
        window = ordered[(ordered["timestamp"] >= lo) & (ordered["timestamp"] < hi)]
        first = window.groupby("user").head(1).set_index("user")["item"]
        assert (
            first.loc[users.loc[rows["user_id"]].to_numpy()].to_numpy() == items.loc[rows["item_id"]].to_numpy()
        ).all()
    # history of a test target = every earlier row of the user (train + valid + test_history)
    for user_id in split.loc[split["split"] == "test", "user_id"]:
        rows = split[split["user_id"] == user_id]
        sequence = ordered.loc[ordered["user"] == users[user_id], "item"].tolist()
        target = items[rows.loc[rows["split"] == "test", "item_id"].item()]
        history = items.loc[rows.loc[rows["split"] != "test", "item_id"]].tolist()
        assert history == sequence[: sequence.index(target)]
        assert set(rows["split"]) <= {"train", "valid", "test_history", "test"}


def test_temporal_users_without_a_window_row_are_not_evaluated_there():
    core, (split, user_map, _) = _temporal()
    from tokenrec_pipeline.evaluation.ranking import eval_inputs_from_splits

    valid = eval_inputs_from_splits(split, "seen", "valid")
    test = eval_inputs_from_splits(split, "seen", "test")
    n_seen = int((user_map["user_group"] == "seen").sum())
    assert len(valid) < n_seen and len(test) < n_seen  # synthetic users are not all active late
    assert set(valid.users) == set(split.loc[split["split"] == "valid", "user_id"])
    # test history = train + valid + test_history rows
    expected = split[split["user_id"].isin(test.users) & split["split"].isin(["train", "valid", "test_history"])]
    assert test.history_indptr[-1] == len(expected)
    # unseen users: held out of training, evaluated on their first test-window row
    unseen = set(user_map.loc[user_map["user_group"] == "unseen", "user_id"])
    assert unseen and unseen == set(split.loc[split["split"] == "unseen_test", "user_id"])
    assert not unseen & set(split.loc[split["split"] == "train", "user_id"])


def test_temporal_split_is_seeded_and_dispatched_by_strategy():
    core, (first, _, _) = _temporal(seed=4)
    again, _, _ = split_by_strategy(core, "global_temporal", 0.1, 4, [0.8, 0.9])
    pd.testing.assert_frame_equal(first, again)
    loo, _, _ = split_by_strategy(core, "leave_one_out", 0.1, 4)
    pd.testing.assert_frame_equal(loo, split_leave_one_out(core, 0.1, 4)[0])
    with pytest.raises(PreprocessingError, match="split_strategy"):
        split_by_strategy(core, "random", 0.1, 4)


@pytest.mark.parametrize("quantiles", [(0.9, 0.8), (0.0, 0.5), (0.5,)])
def test_temporal_cutoffs_must_be_two_increasing_quantiles(quantiles):
    with pytest.raises(PreprocessingError, match="temporal_cutoffs"):
        temporal_cutoffs(np.arange(100), quantiles)


def test_temporal_cutoffs_on_tied_timestamps_name_the_parameter():
    with pytest.raises(PreprocessingError, match="empty window"):
        temporal_cutoffs(np.array([1] * 90 + [2] * 10), (0.5, 0.8))


def test_temporal_integrity_check_catches_cross_user_future_leakage():
    # user 0 trains on an interaction at t=10, later than user 1's validation target at t=5
    split = pd.DataFrame({"user_id": [0, 0, 1, 1], "item_id": [1, 2, 1, 3], "timestamp": [10, 20, 1, 5],
                          "split": ["train", "test", "train", "valid"]})
    with pytest.raises(PreprocessingError, match="Leakage"):
        check_split_integrity(split, strategy="global_temporal")
    ok = split.assign(timestamp=[3, 20, 1, 5])
    check_split_integrity(ok, strategy="global_temporal")
    unseen = pd.DataFrame({"user_id": [2, 2], "item_id": [1, 4], "timestamp": [2, 25],
                           "split": ["unseen_history", "unseen_test"]})
    check_split_integrity(pd.concat([ok, unseen]), strategy="global_temporal")
    # a row after the user's own test target (an unseen user's, so no global time-order check trips first)
    after_target = pd.concat([ok, unseen, pd.DataFrame({"user_id": [2], "item_id": [5], "timestamp": [30],
                                                        "split": ["unseen_history"]})])
    with pytest.raises(PreprocessingError, match="after their test target"):
        check_split_integrity(after_target, strategy="global_temporal")
