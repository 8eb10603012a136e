"""Tests of the CF models (LightGCN, MF), Pop and fold-in on a tiny planted-structure data set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.nn.models import LightGCN

from tokenrec_pipeline.evaluation.ranking import eval_inputs_from_splits, evaluate_inputs
from tokenrec_pipeline.models import cf

N_GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP, UNSEEN_PER_GROUP = 4, 12, 10, 2
N_ITEMS = N_GROUPS * ITEMS_PER_GROUP


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Tiny tensors: one thread is faster than two and avoids OpenMP oversubscription on shared CI cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_split(seed: int = 0) -> pd.DataFrame:
    """Users interact only with their group's items (groups g: items g*10..g*10+9).

    Seen users get 7 items in random order (last -> test, second to last -> valid); the first two
    users' extra items make item popularity unequal. Unseen users (ids after the seen ones) get 5
    history items and one test item.
    """
    rng = np.random.default_rng(seed)
    rows = []
    n_seen = N_GROUPS * USERS_PER_GROUP
    for user in range(n_seen + N_GROUPS * UNSEEN_PER_GROUP):
        seen = user < n_seen
        group = user // USERS_PER_GROUP if seen else (user - n_seen) % N_GROUPS
        items = group * ITEMS_PER_GROUP + rng.choice(ITEMS_PER_GROUP, size=7 if seen else 6, replace=False)
        names = ["train"] * 5 + ["valid", "test"] if seen else ["unseen_history"] * 5 + ["unseen_test"]
        rows += [(user, int(item), t, name) for t, (item, name) in enumerate(zip(items, names, strict=True))]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])


FAST = cf.CFConfig(
    epochs=40, batch_size=64, lr=0.05, embedding_dim=16, eval_every=2, patience=5, show_progress=False, device="cpu"
)


@pytest.fixture(scope="module")
def split_frame() -> pd.DataFrame:
    return planted_split()


@pytest.fixture(scope="module")
def lightgcn(split_frame: pd.DataFrame) -> cf.CFResult:
    return cf.train_cf_from_splits(split_frame, FAST)


def test_negatives_never_training_positives() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 12
    users = np.repeat(np.arange(n_users), 8)
    items = np.concatenate([rng.choice(n_items, 8, replace=False) for _ in range(n_users)])
    keys = cf.positive_keys(users, items, n_items)
    draws_for = torch.tensor(np.repeat(np.arange(n_users), 400))
    negatives = cf.sample_bpr_negatives(draws_for, keys, n_items, torch.Generator().manual_seed(1))
    positive = set(zip(users.tolist(), items.tolist(), strict=True))
    pairs = set(zip(draws_for.tolist(), negatives.tolist(), strict=True))
    assert not pairs & positive
    assert negatives.min() >= 0 and negatives.max() < n_items
    # Uniform over the allowed items: each user's 4 non-positives all show up, about equally often.
    counts = np.bincount(negatives[draws_for == 0].numpy(), minlength=n_items)
    allowed = sorted(set(range(n_items)) - set(items[users == 0].tolist()))
    assert np.all(counts[allowed] > 60)


def test_sample_negatives_raises_when_user_has_every_item() -> None:
    keys = cf.positive_keys(np.zeros(3, dtype=np.int64), np.arange(3), 3)
    with pytest.raises(RuntimeError, match="every item"):
        cf.sample_bpr_negatives(
            torch.zeros(2, dtype=torch.long), keys, 3, torch.Generator().manual_seed(0), max_rounds=5
        )


def test_pop_counts_train_only_and_ranks_by_count() -> None:
    rows = [
        (0, 0, 0, "train"), (0, 1, 1, "train"), (0, 2, 2, "valid"), (0, 3, 3, "test"),
        (1, 1, 0, "train"), (1, 4, 1, "train"), (1, 0, 2, "valid"), (1, 2, 3, "test"),
        (2, 1, 0, "unseen_history"), (2, 3, 1, "unseen_history"), (2, 4, 2, "unseen_test"),
        (3, 3, 0, "unseen_history"), (3, 3, 1, "unseen_history"), (3, 2, 2, "unseen_test"),
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])
    train = cf.train_interactions_from_splits(frame)
    assert (train.n_seen_users, train.n_items) == (2, 5)
    np.testing.assert_array_equal(train.item_degree, [1, 2, 0, 0, 1])  # valid/test/unseen rows not counted
    table, results = cf.evaluate_pop(frame, split="test", ks=(1, 2))
    # seen user 0: history {0,1,2}, target 3 (count 0) vs candidates 3 (0), 4 (1): 4 above -> rank 1.
    # seen user 1: history {1,4,0}, target 2 (0) ties item 3 (0) -> expected rank 0.5.
    np.testing.assert_array_equal(results["seen"].ranks, [1.0, 0.5])
    # unseen user 2: history {1,3}, target 4 (1) vs 0 (1) tie, 2 (0) below -> 0.5.
    np.testing.assert_array_equal(results["unseen"].ranks[:1], [0.5])
    assert set(table["user_group"]) == {"seen", "unseen"}
    valid_table, _ = cf.evaluate_pop(frame, split="valid", ks=(1,))
    assert set(valid_table["user_group"]) == {"seen"}


def test_sparse_lightgcn_equals_torch_geometric_lightgcn() -> None:
    users, items, n_seen, n_items = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 0, 2, 3]), 3, 4
    n_nodes = n_seen + n_items
    edge_index = cf.build_edge_index(users, items, n_seen)
    ours = cf.build_cf_model(cf.CFConfig(num_layers=3, embedding_dim=5, seed=3), n_nodes)
    reference = LightGCN(n_nodes, 5, 3)
    reference.load_state_dict(ours.state_dict())
    adjacency = cf.normalized_adjacency(edge_index, n_nodes)
    ours_emb, ref_emb = ours.get_embedding(adjacency), reference.get_embedding(edge_index)
    torch.testing.assert_close(ours_emb, ref_emb)
    ours_emb.square().sum().backward()
    ref_emb.square().sum().backward()
    torch.testing.assert_close(ours.embedding.weight.grad, reference.embedding.weight.grad)


def test_lightgcn_learns_planted_groups_and_beats_pop(split_frame: pd.DataFrame, lightgcn: cf.CFResult) -> None:
    res = lightgcn
    n_seen = N_GROUPS * USERS_PER_GROUP
    assert res.user_embeddings.shape == (n_seen, 16) and res.item_embeddings.shape == (N_ITEMS, 16)
    assert {"epoch", "loss", "valid_NDCG@20", "valid_HR@20"} <= set(res.history.columns)
    assert res.history["loss"].iloc[-1] < res.history["loss"].iloc[0]
    assert res.best_valid_metrics["NDCG@20"] == pytest.approx(res.history["valid_NDCG@20"].max())
    assert (
        res.history.loc[res.history["epoch"] == res.best_epoch, "valid_NDCG@20"].item()
        == res.best_valid_metrics["NDCG@20"]
    )

    # Each user's top unseen items are their own group's remaining items.
    valid = eval_inputs_from_splits(split_frame, "seen", "valid")
    scores = res.user_embeddings[valid.users] @ res.item_embeddings.T
    for row in range(len(valid)):
        scores[row, valid.history_indices[valid.history_indptr[row] : valid.history_indptr[row + 1]]] = -np.inf
    top = scores.topk(ITEMS_PER_GROUP - 5, dim=1).indices // ITEMS_PER_GROUP
    own_group = torch.as_tensor(valid.users // USERS_PER_GROUP).unsqueeze(1)
    assert (top == own_group).float().mean() > 0.95

    pop_table, _ = cf.evaluate_pop(split_frame, split="valid", ks=(10, 20))
    pop_ndcg = pop_table.query("metric == 'NDCG@20'")["value"].item()
    assert res.best_valid_metrics["NDCG@20"] > pop_ndcg + 0.2


def test_mf_learns_planted_groups(split_frame: pd.DataFrame) -> None:
    res = cf.train_mf(
        cf.train_interactions_from_splits(split_frame), FAST, eval_inputs_from_splits(split_frame, "seen", "valid")
    )
    assert res.model_name == "mf"
    assert res.best_valid_metrics["HR@10"] > 0.9  # 5 candidates of the own group + 30 others
    torch.testing.assert_close(res.item_fold_in_basis, res.item_embeddings)


def test_same_seed_same_embeddings(split_frame: pd.DataFrame) -> None:
    config = cf.CFConfig(epochs=2, batch_size=64, embedding_dim=8, show_progress=False, device="cpu", seed=7)
    train = cf.train_interactions_from_splits(split_frame)
    first, second = cf.train_cf(train, config), cf.train_cf(train, config)
    assert torch.equal(first.user_embeddings, second.user_embeddings)
    assert torch.equal(first.item_embeddings, second.item_embeddings)
    other = cf.train_cf(train, replace(config, seed=8))
    assert not torch.equal(first.item_embeddings, other.item_embeddings)
    assert first.best_epoch == 2 and first.epochs_run == 2  # no validation: last epoch kept (epochs count from 1)


def test_early_stopping_keeps_best_epoch(split_frame: pd.DataFrame) -> None:
    # lr = 0: the metric never improves after the first validation, so training stops after `patience` more.
    config = cf.CFConfig(
        epochs=50, batch_size=256, lr=0.0, embedding_dim=8, patience=3, show_progress=False, device="cpu"
    )
    res = cf.train_cf_from_splits(split_frame, config)
    assert res.best_epoch == 1 and res.epochs_run == 4  # the first epoch, then patience=3 validations


def test_fold_in_formula_and_purity() -> None:
    basis = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    degree = np.array([4, 1, 0])  # item 2 has no train edge: counted as degree 1
    before = basis.clone()
    out = cf.fold_in_user_embeddings(basis, [np.array([0, 1]), np.array([], dtype=np.int64), np.array([2])], degree)
    expected0 = basis[0] / np.sqrt(2 * 4) + basis[1] / np.sqrt(2 * 1)
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], basis[2])
    mean = cf.fold_in_user_embeddings(basis, (np.array([0, 2]), np.array([0, 1])), method="mean")
    torch.testing.assert_close(mean[0], basis[:2].mean(0))
    items = cf.fold_in_item_embeddings(basis, [np.array([0, 2])], np.array([1, 1, 9]))
    torch.testing.assert_close(items[0], (basis[0] / np.sqrt(2 * 1) + basis[2] / np.sqrt(2 * 9)))
    assert torch.equal(basis, before)
    with pytest.raises(ValueError, match="degree"):
        cf.fold_in_user_embeddings(basis, [np.array([0])], None, method="symmetric")


def test_fold_in_reproduces_trained_users_without_ego_term(split_frame: pd.DataFrame, lightgcn: cf.CFResult) -> None:
    # For a seen user, LightGCN's output = alpha_0 * ego embedding + fold-in of their train items.
    train = cf.train_interactions_from_splits(split_frame)
    state_before = {k: v.clone() for k, v in lightgcn.state_dict.items()}
    items_before = lightgcn.item_embeddings.clone()
    histories = [train.items[train.users == u] for u in range(train.n_seen_users)]
    folded = lightgcn.fold_in_users(histories, calibrated=False)
    ego = lightgcn.state_dict["alpha"][0] * lightgcn.state_dict["embedding.weight"][: train.n_seen_users]
    torch.testing.assert_close(folded, lightgcn.user_embeddings - ego, atol=1e-5, rtol=1e-4)
    for key, value in lightgcn.state_dict.items():
        assert torch.equal(value, state_before[key])
    assert torch.equal(lightgcn.item_embeddings, items_before)
    assert lightgcn.fold_in_items([np.array([0, 1])]).shape == (1, 16)


def test_evaluate_cf_seen_and_unseen(split_frame: pd.DataFrame, lightgcn: cf.CFResult) -> None:
    table, results = cf.evaluate_cf(lightgcn, split_frame, split="test", ks=(10, 20))
    assert set(table["user_group"]) == {"seen", "unseen"}
    assert results["unseen"].n_users == N_GROUPS * UNSEEN_PER_GROUP
    # Unseen users are folded in from their group's items: their target (an own-group item) ranks in the top 10.
    assert results["unseen"].metrics["HR@10"] > 0.9
    # Seen test: history = train + valid items, so the test item competes with 3 own-group items at most.
    test_inputs = eval_inputs_from_splits(split_frame, "seen", "test")
    direct = evaluate_inputs(
        test_inputs,
        user_vectors=lightgcn.user_embeddings[test_inputs.users],
        item_vectors=lightgcn.item_embeddings,
        ks=(10, 20),
    )
    assert results["seen"].metrics == direct.metrics
    valid_table, _ = cf.evaluate_cf(lightgcn, split_frame, split="valid")
    assert set(valid_table["user_group"]) == {"seen"}


def test_fold_in_scale_calibrates_magnitude_not_ranking(split_frame: pd.DataFrame, lightgcn: cf.CFResult) -> None:
    train = cf.train_interactions_from_splits(split_frame)
    histories = [train.items[train.users == u] for u in range(train.n_seen_users)]
    raw = lightgcn.fold_in_users(histories, calibrated=False)
    calibrated = lightgcn.fold_in_users(histories)
    assert lightgcn.user_fold_in_scales["symmetric"] > 0
    torch.testing.assert_close(calibrated, raw * lightgcn.user_fold_in_scales["symmetric"])
    # Least squares over the train users: never further from the trained vectors than scale 1.
    trained = lightgcn.user_embeddings
    assert (trained - calibrated).square().sum() <= (trained - raw).square().sum()
    mean_raw = lightgcn.fold_in_users(histories, method="mean", calibrated=False)
    mean_calibrated = lightgcn.fold_in_users(histories, method="mean")
    assert (trained - mean_calibrated).square().sum() <= (trained - mean_raw).square().sum()
    item_users = [train.users[train.items == i] for i in range(train.n_items)]
    items = lightgcn.fold_in_items(item_users)
    assert (lightgcn.item_embeddings - items).square().sum() <= (
        lightgcn.item_embeddings - lightgcn.fold_in_items(item_users, calibrated=False)
    ).square().sum()


LASTFM_SEQUENCES = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tokenrec_processed" / "LastFM"
    / "user_sequence.txt"
)


@pytest.fixture(scope="module")
def lastfm_split() -> pd.DataFrame:
    if not LASTFM_SEQUENCES.is_file():
        pytest.skip(f"real data not present ({LASTFM_SEQUENCES})")
    from tokenrec_pipeline.data.preprocess import split_leave_one_out
    from tokenrec_pipeline.data.sources import read_sequences

    split, _, _ = split_leave_one_out(read_sequences(LASTFM_SEQUENCES), unseen_user_fraction=0.0, seed=0)
    return split


@pytest.mark.realdata
def test_lastfm_pop_matches_benchmarks(lastfm_split: pd.DataFrame) -> None:
    # docs/BENCHMARKS.md, LastFM Pop (exact counts, expected rank over ties): HR@20 0.0602, NDCG@20 0.0236.
    _, results = cf.evaluate_pop(lastfm_split, split="test")
    metrics = results["seen"].metrics
    assert results["seen"].n_users == 1090
    assert metrics["HR@10"] == pytest.approx(0.0385, abs=5e-5)
    assert metrics["HR@20"] == pytest.approx(0.0602, abs=5e-5)
    assert metrics["HR@30"] == pytest.approx(0.0752, abs=5e-5)
    assert metrics["NDCG@20"] == pytest.approx(0.0236, abs=5e-5)


@pytest.mark.realdata
def test_lastfm_short_mf_beats_pop(lastfm_split: pd.DataFrame) -> None:
    config = cf.CFConfig(model="mf", epochs=6, lr=0.005, eval_every=3, show_progress=False, device="cpu")
    result = cf.train_cf_from_splits(lastfm_split, config)
    mf_hr = cf.evaluate_cf(result, lastfm_split, split="test")[1]["seen"].metrics["HR@20"]
    assert mf_hr > 0.0602 + 0.02


def test_evaluate_cf_mean_fold_in(split_frame: pd.DataFrame, lightgcn: cf.CFResult) -> None:
    _, results = cf.evaluate_cf(lightgcn, split_frame, fold_in_method="mean", ks=(10,))
    assert results["unseen"].metrics["HR@10"] > 0.9


def _random_bipartite(seed: int, n_users: int = 40, n_items: int = 25, n_edges: int = 200):
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_users * n_items, size=n_edges))
    return keys // n_items, keys % n_items, n_users, n_items


def _layer_by_layer(adjacency_int64: torch.Tensor, x: torch.Tensor, alpha: list[float]) -> torch.Tensor:
    """The former propagation: ``out = a_0 x``, then per layer ``x = A @ x; out += a_l x``."""
    out = x * alpha[0]
    for a in alpha[1:]:
        x = adjacency_int64 @ x
        out = out + x * a
    return out


def test_csr_propagation_equals_layer_by_layer_sum_forward_and_backward() -> None:
    users, items, n_seen, n_items = _random_bipartite(0)
    n_nodes = n_seen + n_items
    adjacency = cf.normalized_adjacency(cf.build_edge_index(users, items, n_seen), n_nodes)
    assert adjacency.crow_indices().dtype == torch.int32 and adjacency.col_indices().dtype == torch.int32
    reference_adjacency = torch.sparse_csr_tensor(
        adjacency.crow_indices().long(), adjacency.col_indices().long(), adjacency.values(), adjacency.shape
    )
    # Symmetric, as the custom backward assumes.
    dense = adjacency.to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=0)
    alpha = [0.4, 0.3, 0.2, 0.1]  # not all equal: Horner's coefficients must come out in the right order
    model = cf.SparseLightGCN(n_nodes, 8, num_layers=3, alpha=torch.tensor(alpha))
    x = model.embedding.weight
    ours = model.get_embedding(adjacency)
    reference = _layer_by_layer(reference_adjacency, x, alpha)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    grad_ours = x.grad.clone()
    x.grad = None
    (reference * weights).sum().backward()
    torch.testing.assert_close(grad_ours, x.grad, rtol=0, atol=1e-6)
    # The gradient is not trivially the forward: it equals P(A) @ weights, checked densely.
    poly = sum(a * torch.linalg.matrix_power(dense, layer) for layer, a in enumerate(alpha))
    torch.testing.assert_close(grad_ours, poly @ weights, rtol=0, atol=1e-5)


def test_layer_weights_follow_a_loaded_alpha() -> None:
    model = cf.SparseLightGCN(10, 4, num_layers=2)
    assert model.layer_weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    state = model.state_dict()
    state["alpha"] = torch.tensor([0.5, 0.25, 0.25])
    model.load_state_dict(state)
    assert model.layer_weights == pytest.approx((0.5, 0.25, 0.25))


def test_bpr_step_equals_separate_gathers_reference() -> None:
    """One gather + chunk gives the loss and update of the former three separate gathers."""
    users, items, n_seen, n_items = _random_bipartite(1)
    n_nodes = n_seen + n_items
    adjacency = cf.normalized_adjacency(cf.build_edge_index(users, items, n_seen), n_nodes)
    config = cf.CFConfig(embedding_dim=8, num_layers=2, lr=0.01, seed=5)
    ours, reference = cf.build_cf_model(config, n_nodes), cf.build_cf_model(config, n_nodes)
    reference.load_state_dict(ours.state_dict())
    rng = np.random.default_rng(2)
    u = torch.as_tensor(rng.integers(0, n_seen, 16))
    i = torch.as_tensor(rng.integers(0, n_items, 16)) + n_seen
    j = torch.as_tensor(rng.integers(0, n_items, 16)) + n_seen
    loss = cf.bpr_step(ours, adjacency, cf.make_optimizer(config, ours.parameters()), u, i, j, 1e-3)
    emb = reference.get_embedding(adjacency)
    ref_loss = reference.recommendation_loss(
        (emb[u] * emb[i]).sum(-1), (emb[u] * emb[j]).sum(-1), node_id=torch.cat([u, i, j]), lambda_reg=1e-3
    )
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    ref_loss.backward()
    optimizer.step()
    assert float(loss) == pytest.approx(float(ref_loss), abs=1e-6)
    assert not torch.equal(ours.embedding.weight, cf.build_cf_model(config, n_nodes).embedding.weight)  # it moved
    torch.testing.assert_close(ours.embedding.weight, reference.embedding.weight, rtol=0, atol=1e-6)


def test_make_optimizer_is_fused_on_cpu_and_matches_unfused() -> None:
    config = cf.CFConfig(lr=0.01, optimizer="adamw", weight_decay=0.1)
    fused_param = torch.nn.Parameter(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)))
    plain_param = torch.nn.Parameter(fused_param.detach().clone())
    fused = cf.make_optimizer(config, [fused_param])
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"] is True
    plain = torch.optim.AdamW([plain_param], lr=0.01, weight_decay=0.1)
    for step in range(5):
        grad = torch.randn(20, 4, generator=torch.Generator().manual_seed(step + 1))
        fused_param.grad, plain_param.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(fused_param, plain_param, rtol=0, atol=1e-6)


def test_gather_rows_gradient_equals_indexing_with_repeated_rows() -> None:
    table = torch.randn(9, 3, requires_grad=True)
    index = torch.tensor([4, 0, 4, 8, 4, 2])  # repeated rows must accumulate
    upstream = torch.randn(6, 3)
    (cf.gather_rows(table, index) * upstream).sum().backward()
    ours = table.grad.clone()
    table.grad = None
    (table[index] * upstream).sum().backward()
    torch.testing.assert_close(ours, table.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[4], upstream[[0, 2, 4]].sum(0), rtol=0, atol=1e-6)
    assert torch.all(ours[[1, 3, 5, 6, 7]] == 0)
