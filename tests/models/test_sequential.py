"""SASRec / BERT4Rec on tiny inputs: shapes, the causal mask, masked-item training, a planted
next-item rule, and the sequential baselines' rows in the baseline report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tokenrec_pipeline.core.baselines import report_baselines
from tokenrec_pipeline.evaluation.ranking import eval_inputs_from_splits
from tokenrec_pipeline.models import sequential as sq
from tokenrec_pipeline.models.cf import evaluate_pop
from tokenrec_pipeline.pipelines.baselines.nodes import train_sequential_baseline

N_ITEMS = 40


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(model: str, **overrides) -> sq.SequentialConfig:
    base = dict(model=model, hidden_size=16, num_layers=2, num_heads=2, inner_size=32, max_length=8, dropout=0.1,
                lr=0.01, epochs=30, patience=5, batch_size=32, show_progress=False, device="cpu")
    return sq.SequentialConfig(**{**base, **overrides})


def planted_sequences(seed: int = 0, n_seen: int = 130, n_unseen: int = 20) -> pd.DataFrame:
    """Every user walks a fixed random permutation of the items: the next item is ``rule[current]``.

    Start items are drawn with a skew, so Pop has some signal; the split is the protocol's
    leave-one-out (unseen users: history + one test item)."""
    rng = np.random.default_rng(seed)
    rule = rng.permutation(N_ITEMS)
    start_p = np.linspace(3.0, 1.0, N_ITEMS)
    rows = []
    for user in range(n_seen + n_unseen):
        length = int(rng.integers(6, 12))
        item, seq = int(rng.choice(N_ITEMS, p=start_p / start_p.sum())), []
        for _ in range(length):
            seq.append(item)
            item = int(rule[item])
        if user < n_seen:
            names = ["train"] * (length - 2) + ["valid", "test"]
        else:
            names = ["unseen_history"] * (length - 1) + ["unseen_test"]
        rows += [(user, i, t, name) for t, (i, name) in enumerate(zip(seq, names, strict=True))]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])


# ------------------------------------------------------------------------------------------------ data


def test_pad_histories_keeps_the_most_recent_items_left_padded():
    tokens = sq.left_padded_item_tokens([np.array([5, 6, 7]), np.array([], dtype=np.int64), np.arange(10)], 3, 4)
    assert tokens.tolist() == [[0, 6, 7, 8], [0, 0, 0, 0], [7, 8, 9, 10]]


def test_training_windows_cover_every_transition_once():
    # SASRec: windows of 4 items stepping back by 3, so items 0..6 give transitions 0->1 .. 5->6 once each.
    windows = sq.training_windows([np.arange(7), np.array([3])], 2, 4, 3)
    assert windows.tolist() == [[4, 5, 6, 7], [1, 2, 3, 4]]  # the 1-item sequence gives none
    inputs, targets = windows[:, :-1], windows[:, 1:]
    keep = (inputs != 0) & (targets != 0)
    assert sorted(zip(inputs[keep].tolist(), targets[keep].tolist(), strict=True)) == [(t, t + 1) for t in range(1, 7)]
    # BERT4Rec: non-overlapping windows, every item exactly once.
    windows = sq.training_windows([np.arange(7)], 1, 4)
    assert windows.tolist() == [[4, 5, 6, 7], [0, 1, 2, 3]]


# ------------------------------------------------------------------------------------------------ modules


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_shapes(model_name):
    model = sq.build_sequential_model(tiny_config(model_name), N_ITEMS).eval()
    tokens = model.prediction_tokens([np.array([1, 2, 3]), np.array([4])], 2)
    assert tokens.shape == (2, 8)
    assert model(tokens).shape == (2, 8, 16)
    scores = model.predict(tokens)
    assert scores.shape == (2, N_ITEMS)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_trimming_shared_left_padding_changes_no_output(model_name):
    model = sq.build_sequential_model(tiny_config(model_name), N_ITEMS).eval()
    tokens = torch.tensor([[0, 0, 0, 0, 0, 3, 9, 4], [0, 0, 0, 0, 0, 0, 17, 22]])
    trimmed = sq.trim_left_padding(tokens)
    assert trimmed.shape == (2, 3)
    with torch.no_grad():
        assert torch.allclose(model(tokens)[:, -3:], model(trimmed), atol=1e-5)
    assert sq.trim_left_padding(torch.zeros(2, 8, dtype=torch.long), 2).shape == (2, 2)


def test_sasrec_position_never_depends_on_a_later_item():
    model = sq.build_sequential_model(tiny_config("sasrec"), N_ITEMS).eval()
    tokens = torch.tensor([[0, 0, 3, 9, 4, 17, 22, 8]])
    perturbed = tokens.clone()
    perturbed[0, 5] = 30  # change the item at position 5
    with torch.no_grad():
        before, after = model(tokens), model(perturbed)
    assert torch.allclose(before[0, :5], after[0, :5], atol=1e-6)  # earlier positions unchanged
    assert not torch.allclose(before[0, 5:], after[0, 5:], atol=1e-4)  # the item and later ones see it
    # One mask per head; real positions never attend to padding or to later positions.
    blocked = model.attention_mask(tokens)
    assert blocked.shape == (2, 8, 8)
    assert blocked[:, 3, :2].all() and blocked[:, 3, 4:].all() and not blocked[:, 3, 2:4].any()


def test_bert4rec_sees_both_directions():
    model = sq.build_sequential_model(tiny_config("bert4rec"), N_ITEMS).eval()
    tokens = torch.tensor([[0, 0, 3, 9, 4, 17, 22, 8]])
    perturbed = tokens.clone()
    perturbed[0, 5] = 30
    with torch.no_grad():
        assert not torch.allclose(model(tokens)[0, :5], model(perturbed)[0, :5], atol=1e-4)


def test_bert4rec_masked_training_scores_only_masked_positions():
    model = sq.build_sequential_model(tiny_config("bert4rec", dropout=0.0), N_ITEMS)
    window = torch.tensor([[0, 0, 3, 9, 4, 17, 22, 8], [5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 0, 2, 3]])
    inputs, labels = model.mask_items(window, 0.3, torch.Generator().manual_seed(0))
    masked = inputs == model.mask_token
    assert masked.any(dim=1).all()  # at least one masked item per sequence
    assert not (masked & (window == sq.PAD)).any()  # padding is never masked
    assert torch.equal(labels[masked], window[masked]) and (labels[~masked] == sq.PAD).all()

    hidden = model(inputs)
    hidden.retain_grad()
    keep = labels != sq.PAD
    loss = model.loss(hidden[keep], labels[keep] - 1)
    loss.backward()
    # The loss reads the masked rows only: no gradient reaches the output of any other position.
    assert (hidden.grad[~masked] == 0).all()
    assert (hidden.grad[masked].abs().sum(dim=-1) > 0).all()
    # ... and it is the cross-entropy over all items of exactly those rows.
    manual = torch.nn.functional.cross_entropy(hidden[masked] @ model.item_weights.T, window[masked] - 1)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_bert4rec_predicts_from_an_appended_mask_token():
    model = sq.build_sequential_model(tiny_config("bert4rec"), N_ITEMS)
    tokens = model.prediction_tokens([np.arange(20)], 1)
    assert tokens[0, -1].item() == model.mask_token
    assert tokens[0, :-1].tolist() == list(range(14, 21))  # the 7 most recent items, as tokens (item + 1)


def test_sampled_softmax_ignores_a_negative_equal_to_the_target():
    model = sq.build_sequential_model(tiny_config("sasrec"), N_ITEMS)
    hidden = torch.randn(3, 16)
    targets = torch.tensor([1, 2, 3])
    negatives = torch.tensor([1, 5, 6])
    loss = model.loss(hidden, targets, "sampled_softmax", negatives)
    w = model.item_weights.detach()
    # Row 0's target (1) is also a sampled negative: it competes against items 5 and 6 only.
    rows = [torch.stack([hidden[r] @ w[targets[r]]] + [hidden[r] @ w[n] for n in negatives if n != targets[r]])
            for r in range(3)]
    expected = torch.stack([-torch.log_softmax(r, 0)[0] for r in rows]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------ learning


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    return planted_sequences()


def _metric(frame: pd.DataFrame, group: str, metric: str) -> float:
    return frame.query("user_group == @group and metric == @metric")["value"].item()


def test_sasrec_learns_a_planted_next_item_rule_and_beats_pop(planted):
    result = sq.train_sequential_from_splits(planted, tiny_config("sasrec"))
    frame, results = sq.evaluate_sequential(result, planted)
    pop, _ = evaluate_pop(planted)
    for group in ("seen", "unseen"):
        sasrec_hr = _metric(frame, group, "HR@10")
        assert sasrec_hr >= 0.9, (group, sasrec_hr)
        assert sasrec_hr > _metric(pop, group, "HR@10") + 0.3
        assert _metric(frame, group, "NDCG@10") > _metric(pop, group, "NDCG@10") + 0.3
    assert result.best_valid_metrics["NDCG@20"] == result.history["valid_NDCG@20"].max()
    assert set(results) == {"seen", "unseen"} and results["unseen"].n_users == 20


def test_bert4rec_learns_the_rule_better_than_pop(planted):
    result = sq.train_sequential_from_splits(planted, tiny_config("bert4rec"))
    frame, _ = sq.evaluate_sequential(result, planted)
    pop, _ = evaluate_pop(planted)
    assert _metric(frame, "seen", "HR@10") > _metric(pop, "seen", "HR@10") + 0.2


def test_training_is_deterministic_for_a_seed(planted):
    config = tiny_config("sasrec", epochs=2)
    a = sq.train_sequential_from_splits(planted, config)
    b = sq.train_sequential_from_splits(planted, config)
    pd.testing.assert_frame_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"))  # wall time


def test_unseen_users_are_scored_from_their_history_without_retraining(planted):
    result = sq.train_sequential_from_splits(planted, tiny_config("sasrec", epochs=2))
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    unseen = eval_inputs_from_splits(planted, "unseen", "test")
    scores = sq.sequential_score_fn(result.model, unseen)(torch.tensor(unseen.users[::-1].copy()))
    # Rows follow the requested user ids, not the input order.
    direct = result.model.predict(result.model.prediction_tokens(unseen.histories, len(unseen)))
    assert torch.allclose(scores, direct.detach().flip(0), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in result.model.state_dict().items())


# ------------------------------------------------------------------------------------------------ stage nodes


def test_disabled_sequential_baseline_is_skipped_and_its_row_dropped(planted):
    params = {**{k: v for k, v in vars(tiny_config("sasrec", epochs=2)).items() if k != "eval_ks"}}
    metrics, ranks, history, curves = train_sequential_baseline(planted, {**params, "model": "bert4rec"},
                                                                ["pop", "sasrec"], seed=0)
    assert metrics.empty and ranks.empty and history.empty and curves == {}

    sasrec_metrics, sasrec_ranks, sasrec_history, sasrec_curves = train_sequential_baseline(
        planted, params, ["pop", "sasrec"], seed=0)
    assert set(sasrec_metrics["model"]) == {"sasrec"}
    assert set(sasrec_ranks["user_group"]) == {"seen", "unseen"} and len(sasrec_history) == 2
    assert "train.sasrec.loss" in sasrec_curves
    pop, _ = evaluate_pop(planted)

    long, markdown, mlflow_metrics = report_baselines(["pop", "sasrec", "bert4rec"], pop, sasrec_metrics, metrics)
    assert set(long["model"]) == {"pop", "sasrec"}
    assert "| sasrec |" in markdown and "test.unseen.sasrec.HR_at_20" in mlflow_metrics
    # switching a baseline off removes its row even when its table was computed (e.g. the CF model in use)
    long, markdown, _ = report_baselines(["sasrec"], pop, sasrec_metrics, metrics)
    assert set(long["model"]) == {"sasrec"} and "| pop |" not in markdown
    long, markdown, mlflow_metrics = report_baselines([], pop, sasrec_metrics)
    assert long.empty and mlflow_metrics == {}
    with pytest.raises(ValueError, match="unknown baseline"):
        report_baselines(["pop", "gru4rec"], pop)
    assert set(report_baselines("pop, sasrec", pop, sasrec_metrics)[0]["model"]) == {"pop", "sasrec"}
