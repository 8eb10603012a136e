"""Tests of the shared full-ranking evaluator against a brute-force reference and known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tokenrec_pipeline.evaluation.ranking import (
    METRIC_COLUMNS,
    EvalInputs,
    GroupSpec,
    eval_inputs_from_splits,
    evaluate_inputs,
    evaluate_ranking,
    evaluate_user_groups,
    expected_hit_rate,
    expected_ndcg,
    histories_to_csr,
    metrics_wide,
    split_sizes,
    topk_items,
)

# ---------------------------------------------------------------------------------------------
# Brute-force reference: one user at a time, every possible tie order enumerated explicitly.
# ---------------------------------------------------------------------------------------------


def reference_metrics(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray, ks) -> dict[str, float]:
    """Average HR@K / NDCG@K over users and over every ordering position inside the target's tie."""
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("HR", "NDCG")}
    for u in range(len(targets)):
        target = int(targets[u])
        excluded = {int(i) for i in histories[u]} - {target}
        candidates = [i for i in range(scores.shape[1]) if i not in excluded]
        target_score = scores[u, target]
        better = [i for i in candidates if scores[u, i] > target_score]
        tied_others = [i for i in candidates if scores[u, i] == target_score and i != target]
        # The target can sit at any of the len(tied_others) + 1 places inside its tie group.
        possible_ranks = [len(better) + p for p in range(len(tied_others) + 1)]
        for k in ks:
            totals[f"HR@{k}"] += sum(1.0 for r in possible_ranks if r < k) / len(possible_ranks)
            totals[f"NDCG@{k}"] += sum(1.0 / math.log2(r + 2) for r in possible_ranks if r < k) / len(possible_ranks)
    return {name: value / len(targets) for name, value in totals.items()}


def random_case(seed: int, n_users: int = 40, n_items: int = 25, n_levels: int = 4):
    """Integer-valued scores from a few levels -> many ties; random histories that sometimes hold the target."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, n_levels, size=(n_users, n_items)).astype(np.float32)
    targets = rng.integers(0, n_items, size=n_users)
    histories = []
    for u in range(n_users):
        hist = rng.choice(n_items, size=rng.integers(0, 8), replace=False)
        if rng.random() < 0.3:
            hist = np.append(hist, targets[u])  # the target must never be excluded
        histories.append(hist)
    return scores, histories, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_matches_brute_force_with_ties_and_history(seed: int, batch_size: int) -> None:
    scores, histories, targets = random_case(seed)
    users = np.arange(len(targets))
    score_table = torch.as_tensor(scores)
    result = evaluate_ranking(
        users, histories, targets, score_fn=lambda u: score_table[u], ks=(1, 3, 10, 20), batch_size=batch_size
    )
    expected = reference_metrics(scores, histories, targets, ks=(1, 3, 10, 20))
    assert result.metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-12), name


def test_vector_mode_matches_score_fn_and_cosine() -> None:
    rng = np.random.default_rng(3)
    users = np.array([4, 0, 2])
    user_vecs = torch.as_tensor(rng.normal(size=(3, 5)), dtype=torch.float32)
    item_vecs = torch.as_tensor(rng.normal(size=(30, 5)), dtype=torch.float32) * torch.linspace(0.1, 3, 30).unsqueeze(1)
    histories = [np.array([1, 2]), np.array([], dtype=np.int64), np.array([5])]
    targets = np.array([3, 7, 5])
    dot = evaluate_ranking(users, histories, targets, user_vectors=user_vecs, item_vectors=item_vecs, ks=(5,))
    # score_fn gets user *ids*; vectors are row-aligned with `users`.
    by_id = {int(u): user_vecs[r] for r, u in enumerate(users)}
    via_fn = evaluate_ranking(
        users, histories, targets, score_fn=lambda ids: torch.stack([by_id[int(i)] for i in ids]) @ item_vecs.T, ks=(5,)
    )
    np.testing.assert_array_equal(dot.n_greater, via_fn.n_greater)
    cos = evaluate_ranking(
        users, histories, targets, user_vectors=user_vecs, item_vectors=item_vecs, similarity="cosine", ks=(5,)
    )
    normed = torch.nn.functional.normalize(item_vecs, dim=1)
    cos_ref = evaluate_ranking(users, histories, targets, user_vectors=user_vecs, item_vectors=normed, ks=(5,))
    np.testing.assert_array_equal(cos.n_greater, cos_ref.n_greater)


def test_known_answers_hand_made() -> None:
    # 6 items; user 0: target 2 is 3rd best (items 5 and 0 above) -> rank 2.
    # user 1: target 4 is best after excluding its history {1, 3} which scored higher -> rank 0.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.2, 0.3, 1.0],
            [0.0, 0.9, -0.5, 0.8, 0.1, -0.2],
        ]
    )
    res = evaluate_ranking(
        [0, 1], [np.array([], dtype=np.int64), np.array([1, 3])], [2, 4], score_fn=lambda u: scores[u], ks=(1, 2, 3)
    )
    np.testing.assert_array_equal(res.ranks, [2.0, 0.0])
    assert res.metrics["HR@1"] == pytest.approx(0.5)
    assert res.metrics["HR@2"] == pytest.approx(0.5)
    assert res.metrics["HR@3"] == pytest.approx(1.0)
    assert res.metrics["NDCG@3"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)
    assert res.metrics["NDCG@2"] == pytest.approx(0.5)


def test_history_is_minus_inf_not_zero() -> None:
    # Cosine-like scores all negative except history items. If history were set to 0 instead of -inf,
    # the excluded items would outrank the target (score -0.1) and push it to rank 2.
    scores = torch.tensor([[0.7, 0.6, -0.1, -0.5, -0.9]])
    res = evaluate_ranking([0], [np.array([0, 1])], [2], score_fn=lambda u: scores, ks=(1,))
    assert res.ranks[0] == 0.0
    assert res.metrics["HR@1"] == 1.0


def test_target_in_history_is_not_excluded() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5]])
    res = evaluate_ranking([0], [np.array([1, 2])], [1], score_fn=lambda u: scores, ks=(1,))
    assert res.metrics["HR@1"] == 1.0  # item 2 excluded, item 1 (the target) kept


def test_constant_scores_are_not_a_hit() -> None:
    n_items = 50
    res = evaluate_ranking(
        np.arange(4),
        [np.array([0, 1, 2, 3, 4])] * 4,
        [10, 20, 30, 40],
        score_fn=lambda u: torch.zeros(len(u), n_items),
        ks=(10,),
    )
    # The target ties with all 45 candidates: expected HR@10 = 10 / 45, expected rank 22.
    assert res.metrics["HR@10"] == pytest.approx(10 / 45)
    np.testing.assert_allclose(res.ranks, 22.0)


def test_target_scored_minus_inf_ties_only_with_candidates() -> None:
    inf = float("-inf")
    scores = torch.tensor([[inf, inf, inf, 0.5, inf]])
    # History {0, 1} is excluded; candidates 2 (-inf, tied with the target), 3 (above) and the target 4.
    res = evaluate_ranking([0], [np.array([0, 1])], [4], score_fn=lambda u: scores, ks=(2,))
    assert res.n_greater[0] == 1 and res.n_tied[0] == 1
    assert res.metrics["HR@2"] == pytest.approx(0.5)


def test_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking([0], [np.array([], dtype=np.int64)], [0], score_fn=lambda u: torch.full((1, 3), float("nan")))


def test_per_user_and_expected_formulas() -> None:
    # g = 3 items above, t = 4 tied: rank uniform on 3..7.
    assert expected_hit_rate(np.array([3]), np.array([4]), 5)[0] == pytest.approx(2 / 5)
    want = (1 / math.log2(5) + 1 / math.log2(6)) / 5
    assert expected_ndcg(np.array([3]), np.array([4]), 5)[0] == pytest.approx(want)
    scores, histories, targets = random_case(5)
    table = torch.as_tensor(scores)
    res = evaluate_ranking(np.arange(len(targets)), histories, targets, score_fn=lambda u: table[u])
    assert res.per_user("NDCG@20").mean() == pytest.approx(res.metrics["NDCG@20"])
    assert res.per_user("HR@7").shape == (len(targets),)


def test_topk_lists_deterministic_ties_by_item_id() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(topk_items(scores, 3).numpy(), [[1, 2, 4], [0, 1, 2]])
    res = evaluate_ranking(
        [0, 1], [np.array([2]), np.array([0, 1, 2, 3])], [5, 4], score_fn=lambda u: scores[u], ks=(3,), return_topk=True
    )
    np.testing.assert_array_equal(res.topk_items, [[1, 4, 5], [4, 5, -1]])  # -1: only 2 candidates left


def test_histories_csr_and_list_agree() -> None:
    lists = [np.array([3, 1]), np.array([], dtype=np.int64), np.array([2])]
    indptr, indices = histories_to_csr(lists, 3)
    np.testing.assert_array_equal(indptr, [0, 2, 2, 3])
    np.testing.assert_array_equal(indices, [3, 1, 2])
    assert histories_to_csr((indptr, indices), 3)[0] is not None
    with pytest.raises(ValueError, match="CSR"):
        histories_to_csr((np.array([0, 5]), np.array([1])), 1)


def _tiny_split_frame() -> pd.DataFrame:
    rows = [
        # seen user 0: train 0,1 ; valid 2 ; test 3
        (0, 0, 1, "train"), (0, 1, 2, "train"), (0, 2, 3, "valid"), (0, 3, 4, "test"),
        # seen user 1: train 4 ; valid 0 ; test 1
        (1, 4, 1, "train"), (1, 0, 2, "valid"), (1, 1, 3, "test"),
        # unseen user 2: history 1,2 ; test 4
        (2, 1, 1, "unseen_history"), (2, 2, 2, "unseen_history"), (2, 4, 3, "unseen_test"),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])


def test_eval_inputs_from_splits_protocol() -> None:
    df = _tiny_split_frame()
    assert split_sizes(df).n_seen_users == 2 and split_sizes(df).n_users == 3 and split_sizes(df).n_items == 5
    valid = eval_inputs_from_splits(df, "seen", "valid")
    np.testing.assert_array_equal(valid.users, [0, 1])
    np.testing.assert_array_equal(valid.targets, [2, 0])
    np.testing.assert_array_equal(valid.history_indptr, [0, 2, 3])
    np.testing.assert_array_equal(valid.history_indices, [0, 1, 4])
    test = eval_inputs_from_splits(df, "seen", "test")
    np.testing.assert_array_equal(test.targets, [3, 1])
    np.testing.assert_array_equal(test.history_indices, [0, 1, 2, 4, 0])  # train + valid
    unseen = eval_inputs_from_splits(df, "unseen", "test")
    np.testing.assert_array_equal(unseen.users, [2])
    np.testing.assert_array_equal(unseen.history_indices, [1, 2])
    np.testing.assert_array_equal(unseen.targets, [4])
    with pytest.raises(ValueError, match="unseen"):
        eval_inputs_from_splits(df, "unseen", "valid")
    with pytest.raises(ValueError, match="split"):
        eval_inputs_from_splits(df.drop(columns="split"), "seen", "test")


def test_evaluate_user_groups_tidy_and_wide() -> None:
    df = _tiny_split_frame()
    table = torch.arange(5, dtype=torch.float32)  # item 4 best, then 3, ...
    fn = lambda u: table.expand(len(u), -1)  # noqa: E731
    groups = {
        "seen": GroupSpec(eval_inputs_from_splits(df, "seen", "test"), score_fn=fn),
        "unseen": GroupSpec(eval_inputs_from_splits(df, "unseen", "test"), score_fn=fn),
        "empty": GroupSpec(EvalInputs.from_arrays([], [], []), score_fn=fn),
    }
    frame, results = evaluate_user_groups(groups, model="toy", split="test", ks=(1, 2))
    assert list(frame.columns) == list(METRIC_COLUMNS)
    assert set(frame["user_group"]) == {"seen", "unseen"}  # empty group skipped
    assert len(frame) == 2 * 4
    # unseen user 2: history {1, 2}, target 4 is the best item -> hit.
    unseen_hr1 = frame.query("user_group == 'unseen' and metric == 'HR@1'")["value"].item()
    assert unseen_hr1 == 1.0
    # seen user 0 (test 3, history 0,1,2): item 4 above -> rank 1; user 1 (test 1, history 4,0): 3,2 above -> rank 2.
    np.testing.assert_array_equal(results["seen"].ranks, [1.0, 2.0])
    wide = metrics_wide(frame)
    assert list(wide.columns) == ["model", "split", "user_group", "n_users", "HR@1", "NDCG@1", "HR@2", "NDCG@2"]
    assert len(wide) == 2


def test_evaluate_inputs_wrapper_and_argument_errors() -> None:
    inputs = EvalInputs.from_arrays([0], [np.array([1])], [0])
    res = evaluate_inputs(inputs, user_vectors=torch.ones(1, 2), item_vectors=torch.eye(2)[[0, 1, 0]], ks=(1,))
    assert res.n_users == 1
    with pytest.raises(ValueError, match="either|not both"):
        evaluate_inputs(
            inputs, score_fn=lambda u: torch.zeros(1, 3), user_vectors=torch.ones(1, 2), item_vectors=torch.ones(3, 2)
        )
    with pytest.raises(ValueError, match="row i"):
        evaluate_inputs(inputs, user_vectors=torch.ones(5, 2), item_vectors=torch.ones(3, 2))
    with pytest.raises(ValueError, match="target"):
        evaluate_ranking([0], [np.array([], dtype=np.int64)], [9], score_fn=lambda u: torch.zeros(1, 3))


def test_topk_items_matches_sorted_reference_on_random_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        n_items = int(torch.randint(1, 30, (1,), generator=generator))
        k = int(torch.randint(1, 35, (1,), generator=generator))
        scores = torch.randint(0, 4, (5, n_items), generator=generator).float()
        scores[torch.rand(5, n_items, generator=generator) < 0.2] = float("-inf")
        got = topk_items(scores, k).numpy()
        for row in range(5):
            reference = sorted(range(n_items), key=lambda i: (-scores[row, i].item(), i))[: min(k, n_items)]
            reference = [i if scores[row, i] != float("-inf") else -1 for i in reference]
            assert list(got[row]) == reference


def test_vector_mode_with_repeated_history_entries_matches_brute_force() -> None:
    """Vector scores (NaN scan of the vectors, not of the scores) with ties, repeated history items
    and targets inside the history."""
    rng = np.random.default_rng(7)
    user_vectors = rng.integers(-2, 3, size=(30, 3)).astype(np.float32)  # small integers: many exact ties
    item_vectors = rng.integers(-2, 3, size=(20, 3)).astype(np.float32)
    scores = user_vectors @ item_vectors.T
    targets = rng.integers(0, 20, size=30)
    histories = [np.concatenate([h, h[:2], [t]]) for h, t in
                 ((rng.choice(20, size=rng.integers(1, 6), replace=False), t) for t in targets)]
    result = evaluate_ranking(np.arange(30), histories, targets, user_vectors=user_vectors,
                              item_vectors=item_vectors, ks=(1, 5, 10), batch_size=8)
    expected = reference_metrics(scores, histories, targets, ks=(1, 5, 10))
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-12), name


def test_vector_mode_nan_vectors_raise() -> None:
    user_vectors = np.ones((2, 3), dtype=np.float32)
    user_vectors[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking([0, 1], [np.array([], dtype=np.int64)] * 2, [0, 1], user_vectors=user_vectors,
                         item_vectors=np.ones((4, 3), dtype=np.float32))
