"""The synthetic default: deterministic, sized by parameters, and structured beyond popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tokenrec_pipeline.data.preprocess import filter_k_core, split_leave_one_out, to_implicit_feedback
from tokenrec_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_interactions


def test_deterministic_from_seed():
    config = SyntheticConfig(n_users=200, n_items=100)
    pd.testing.assert_frame_equal(
        generate_synthetic_interactions(config, 1), generate_synthetic_interactions(config, 1)
    )
    assert not generate_synthetic_interactions(config, 1).equals(generate_synthetic_interactions(config, 2))


def test_sized_by_parameters_and_popularity_skewed():
    frame = generate_synthetic_interactions(SyntheticConfig(n_users=400, n_items=300, mean_history=15), 0)
    assert frame["user"].nunique() == 400 and frame["item"].max() < 300
    assert 10 < frame.groupby("user").size().mean() <= 15
    counts = np.sort(frame["item"].value_counts().to_numpy())[::-1]
    assert counts[: len(counts) // 10].sum() > 2.5 * counts[-len(counts) // 10 :].sum()


def test_bad_parameter_is_named():
    with pytest.raises(ValueError, match="ingestion.synthetic.n_items=5"):
        SyntheticConfig.from_params({"n_items": 5, "n_groups": 10})
    with pytest.raises(ValueError, match="bogus"):
        SyntheticConfig.from_params({"bogus": 1})


def test_co_occurrence_beats_popularity_on_held_out_items():
    """The planted groups must be learnable: item co-occurrence beats popularity by a margin."""
    frame = generate_synthetic_interactions(SyntheticConfig(n_users=800, n_items=400), 0).astype(
        {"user": str, "item": str}
    )
    split, _, item_map = split_leave_one_out(filter_k_core(to_implicit_feedback(frame), 5), 0.0, seed=0)
    n_items = len(item_map)
    train = split[split["split"] == "train"]
    valid = split[split["split"] == "valid"].set_index("user_id")["item_id"]
    matrix = np.zeros((split["user_id"].max() + 1, n_items))
    matrix[train["user_id"], train["item_id"]] = 1.0
    co_occurrence = matrix.T @ matrix
    np.fill_diagonal(co_occurrence, 0)
    scores = {"pop": np.tile(matrix.sum(0), (len(matrix), 1)), "cooc": matrix @ co_occurrence}
    hits = {}
    for name, score in scores.items():
        score = np.where(matrix > 0, -np.inf, score)[valid.index]
        top = np.argsort(-score, axis=1, kind="stable")[:, :20]
        hits[name] = (top == valid.to_numpy()[:, None]).any(1).mean()
    assert hits["cooc"] > 1.5 * hits["pop"], hits
