"""The one epoch loop every trainer runs (training/loop.py): numbering, validation cadence, best epoch, patience."""

from __future__ import annotations

import math

import pytest

from tokenrec_pipeline.training.loop import EarlyStopping, fit_epochs, valid_metrics


def _run(scores, epochs=10, patience=2, eval_every=1, mode="max", before=None, max_seconds=None):
    """fit_epochs with scripted validation scores; returns the result and the epochs whose weights were kept."""
    scripted = iter(scores)
    kept, restored = [], []

    def validate(epoch):
        if epoch == 0:
            return {"valid_NDCG@20": before}
        return valid_metrics({"NDCG@20": next(scripted)})

    result = fit_epochs("test", epochs, lambda epoch: {"loss": 1.0 / epoch}, validate,
                        EarlyStopping("valid_NDCG@20", mode, patience), keep_best=kept.append,
                        restore_best=lambda: restored.append(kept[-1]), eval_every=eval_every,
                        validate_before_training=before is not None, max_seconds=max_seconds, show_progress=False)
    return result, kept, restored


def test_keeps_the_best_epoch_and_stops_after_patience_validations():
    result, kept, restored = _run([0.1, 0.3, 0.2, 0.25, 0.9])
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]  # epochs from 1; stopped before the 0.9
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.3) and result.stopped_early
    assert kept == [1, 2] and restored == [2]
    assert all({"epoch", "loss", "seconds", "valid_NDCG@20"} <= set(r) for r in result.history)


def test_validates_every_eval_every_epochs_and_after_the_last():
    result, kept, _ = _run([0.1, 0.2, 0.3], epochs=5, eval_every=2, patience=None)
    validated = [r["epoch"] for r in result.history if "valid_NDCG@20" in r]
    assert validated == [2, 4, 5] and result.epochs_run == 5 and not result.stopped_early
    assert result.best_epoch == 5 and kept == [2, 4, 5]


def test_epoch_zero_is_a_candidate_so_training_never_ends_below_its_start():
    result, kept, restored = _run([0.2, 0.1], epochs=2, patience=None, before=0.5)
    assert [r["epoch"] for r in result.history] == [0, 1, 2] and math.isnan(result.history[0]["loss"])
    assert result.best_epoch == 0 and kept == [0] and restored == [0]


def test_min_mode_and_no_validation_keeps_the_last_epoch():
    result, _, _ = _run([0.5, 0.4, 0.6, 0.7], epochs=4, mode="min", patience=2)
    assert result.best_epoch == 2 and result.epochs_run == 4
    plain = fit_epochs("plain", 3, lambda epoch: {"loss": 1.0}, None, EarlyStopping("valid_NDCG@20"),
                       show_progress=False)
    assert plain.best_epoch == 3 and math.isnan(plain.best_score) and len(plain.history) == 3


def test_max_seconds_stops_after_the_epoch_that_crosses_it():
    result, _, _ = _run([0.1] * 10, epochs=10, patience=None, max_seconds=0.0)
    assert result.epochs_run == 1 and result.stopped_early


def test_a_validation_without_the_monitored_metric_is_refused():
    with pytest.raises(KeyError, match="valid_NDCG@20"):
        fit_epochs("test", 1, lambda epoch: {"loss": 1.0}, lambda epoch: {"valid_HR@20": 0.1},
                   EarlyStopping("valid_NDCG@20"), show_progress=False)
    with pytest.raises(ValueError, match="monitor_mode"):
        EarlyStopping("loss", mode="up")
