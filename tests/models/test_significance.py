"""Paired tests and bootstrap intervals against hand computations on tiny per-user tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tokenrec_pipeline.evaluation.significance import (
    bootstrap_interval,
    paired_test,
    per_user_metrics,
    significance_table,
)

# Six users; TokenRec's and LightGCN's 0-based target ranks (no ties: continuous scores).
TOKENREC_RANKS = [0, 3, 25, 7, 1, 12]
LIGHTGCN_RANKS = [2, 0, 4, 30, 9, 40]


def _ranks() -> pd.DataFrame:
    rows = []
    for model, ranks in (("tokenrec", TOKENREC_RANKS), ("lightgcn", LIGHTGCN_RANKS)):
        for user, rank in enumerate(ranks):
            rows.append({"model": model, "split": "test", "user_group": "seen", "user_id": user,
                         "target_item": 100 + user, "rank": float(rank)})
    # pop was evaluated on one user fewer: only the 5 shared users are paired
    rows += [{"model": "pop", "split": "test", "user_group": "seen", "user_id": u, "target_item": 100 + u,
              "rank": 50.0} for u in range(5)]
    return pd.DataFrame(rows)


def _ndcg20(rank: int) -> float:
    return 1 / math.log2(rank + 2) if rank < 20 else 0.0


def test_per_user_metrics_by_hand():
    table = per_user_metrics(_ranks()[lambda f: f["model"] == "lightgcn"], ["HR@20", "NDCG@20", "HR@5"])
    assert table["HR@20"].tolist() == [1, 1, 1, 0, 1, 0]
    assert table["HR@5"].tolist() == [1, 1, 1, 0, 0, 0]
    assert table["NDCG@20"].tolist() == pytest.approx(
        [1 / math.log2(4), 1.0, 1 / math.log2(6), 0, 1 / math.log2(11), 0]
    )


def test_per_user_metrics_use_the_tie_rule_when_counts_are_given():
    # 18 items above the target and 3 tied with it: the target is at 18..21 with equal chance
    ranks = pd.DataFrame({"model": ["pop"], "split": ["test"], "user_group": ["seen"], "user_id": [0],
                          "rank": [19.5], "n_greater": [18], "n_tied": [3]})
    table = per_user_metrics(ranks, ["HR@20", "NDCG@20"])
    assert table["HR@20"].item() == pytest.approx(2 / 4)
    assert table["NDCG@20"].item() == pytest.approx((1 / math.log2(20) + 1 / math.log2(21)) / 4)


def test_tables_with_and_without_tie_counts_mix_row_by_row():
    exact = pd.DataFrame({"model": ["pop"], "split": ["test"], "user_group": ["seen"], "user_id": [0],
                          "rank": [19.5], "n_greater": [18], "n_tied": [3]})
    untied = pd.DataFrame(
        {"model": ["sasrec"], "split": ["test"], "user_group": ["seen"], "user_id": [0], "rank": [19.0]}
    )
    table = per_user_metrics(pd.concat([exact, untied], ignore_index=True), ["HR@20"])
    assert table["HR@20"].tolist() == [0.5, 1.0]


def test_paired_wilcoxon_and_t_test_match_a_hand_computation():
    tok = np.array([_ndcg20(r) for r in TOKENREC_RANKS])
    lgc = np.array([_ndcg20(r) for r in LIGHTGCN_RANKS])
    diff = lgc - tok
    assert np.all(diff != 0) and len(set(np.abs(diff))) == len(diff)  # no zeros, no ties: exact test
    # Wilcoxon by hand: rank |d|, W = min(W+, W-), exact two-sided p by enumerating all 2^6 sign patterns.
    order = np.argsort(np.abs(diff))
    signed_ranks = np.empty(len(diff))
    signed_ranks[order] = np.arange(1, len(diff) + 1)
    w_plus = signed_ranks[diff > 0].sum()
    w = min(w_plus, signed_ranks.sum() - w_plus)
    all_w_plus = [
        sum(r for r, s in zip(range(1, 7), signs, strict=True) if s) for signs in itertools.product([0, 1], repeat=6)
    ]
    p_exact = min(1.0, 2 * sum(x <= w for x in all_w_plus) / 2**6)
    # paired t by hand
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(len(diff)))
    p_t = 2 * stats.t.sf(abs(t), df=len(diff) - 1)

    result = paired_test(lgc, tok)
    assert result["n_paired"] == 6 and result["mean_diff"] == pytest.approx(diff.mean())
    assert result["wilcoxon_statistic"] == pytest.approx(w)
    assert result["p_wilcoxon"] == pytest.approx(p_exact)
    assert result["t_statistic"] == pytest.approx(t) and result["p_ttest"] == pytest.approx(p_t)


def test_identical_models_have_p_one_and_a_clear_difference_is_significant():
    same = np.array([0.1, 0.5, 0.0, 1.0])
    assert paired_test(same, same)["p_wilcoxon"] == 1.0 and paired_test(same, same)["p_ttest"] == 1.0
    rng = np.random.default_rng(0)
    base = rng.random(200)
    better = paired_test(base + 0.2 + 0.01 * rng.random(200), base)
    assert better["p_wilcoxon"] < 1e-6 and better["p_ttest"] < 1e-6 and better["mean_diff"] > 0.19


def test_bootstrap_interval_is_seeded_and_matches_the_normal_approximation():
    values = np.r_[np.ones(100), np.zeros(300)]  # HR of 0.25 over 400 users
    low, high = bootstrap_interval(values, n_resamples=2000, seed=1)
    assert (low, high) == bootstrap_interval(values, n_resamples=2000, seed=1)
    half_width = 1.96 * math.sqrt(0.25 * 0.75 / 400)  # by hand: 0.0424
    assert low == pytest.approx(0.25 - half_width, abs=0.01) and high == pytest.approx(0.25 + half_width, abs=0.01)
    assert bootstrap_interval(np.full(5, 0.3)) == (0.3, 0.3)


def test_significance_table_pairs_each_model_with_the_reference_on_shared_users():
    table = significance_table(_ranks(), reference="tokenrec", n_resamples=200, seed=0)
    ndcg = table[table["metric"] == "NDCG@20"].set_index("model")
    assert set(table["metric"]) == {"HR@20", "NDCG@20"}
    assert ndcg.loc["lightgcn", "value"] == pytest.approx(np.mean([_ndcg20(r) for r in LIGHTGCN_RANKS]))
    assert ndcg.loc["lightgcn", "n_paired"] == 6 and ndcg.loc["pop", "n_paired"] == 5
    assert ndcg.loc["pop", "mean_diff"] == pytest.approx(-np.mean([_ndcg20(r) for r in TOKENREC_RANKS[:5]]))
    assert ndcg.loc["lightgcn", "p_wilcoxon"] == pytest.approx(
        paired_test([_ndcg20(r) for r in LIGHTGCN_RANKS], [_ndcg20(r) for r in TOKENREC_RANKS])["p_wilcoxon"])
    assert np.isnan(ndcg.loc["tokenrec", "p_wilcoxon"])  # no test of the reference against itself
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    hr = table[table["metric"] == "HR@20"].set_index("model")
    assert hr["p_wilcoxon"].isna().all()  # the paired test is on NDCG@20 only


def test_missing_ranks_columns_are_named():
    with pytest.raises(ValueError, match="user_group"):
        per_user_metrics(pd.DataFrame({"model": ["a"], "split": ["test"], "user_id": [0], "rank": [1.0]}))
