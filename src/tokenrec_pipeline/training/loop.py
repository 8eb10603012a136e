"""The one epoch loop every trainer runs: train an epoch, validate, keep the best, stop early.

LightGCN / MF (``models.cf``), SASRec / BERT4Rec (``models.sequential``), the tokenizers
(``models.tokenizers``), LLM4Rec and the autoregressive baseline (through :func:`~.engine.run_training_loop`)
each hand :func:`fit_epochs` two callables, ``train_epoch(epoch)`` and ``validate(epoch)``, and an
:class:`EarlyStopping`; the loop owns the epoch numbering, the history format, the best-epoch bookkeeping,
patience, the progress bar and the log lines. So every trainer's history has the same shape:

* ``epoch``: 1-based; 0 is the model before the first step (when ``validate_before_training``).
* ``loss``: the epoch's mean training loss (NaN for epoch 0), plus whatever else ``train_epoch`` reports.
* validation metrics named as ``validate`` returns them; by convention ``valid_<metric>`` with the evaluator's
  metric names (``valid_NDCG@20``, ``valid_HR@20``, the tokenizer's ``valid_recon_mse``).
* ``seconds``: wall time of the epoch (training and validation).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: Prefix of validation metrics in every training history (``valid_NDCG@20``).
VALID_PREFIX = "valid_"


def valid_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``{"NDCG@20": x}`` -> ``{"valid_NDCG@20": x}``: evaluator metrics as history columns."""
    return {f"{VALID_PREFIX}{name}": float(value) for name, value in metrics.items()}


@dataclass
class EarlyStopping:
    """Best-epoch bookkeeping and patience, in validations.

    Attributes:
        monitor: History column that decides the best epoch (e.g. ``valid_NDCG@20``; ``loss`` monitors the
            training loss, which every epoch has).
        mode: "max" or "min".
        patience: Validations without improvement before stopping (``None``: never stop early).
        min_delta: Smallest change counted as an improvement.
        best_epoch: Epoch of the best score so far (``None`` before the first scored epoch).
        best_score: That score.
        stale: Validations since the last improvement.
    """

    monitor: str
    mode: str = "max"
    patience: int | None = None
    min_delta: float = 0.0
    best_epoch: int | None = None
    best_score: float = float("nan")
    stale: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"monitor_mode must be 'max' or 'min', got {self.mode!r}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}.")

    def improves(self, score: float) -> bool:
        """Whether ``score`` beats the best so far by more than ``min_delta`` (the first score always does)."""
        if self.best_epoch is None:
            return True
        if self.mode == "max":
            return score > self.best_score + self.min_delta
        return score < self.best_score - self.min_delta

    def update(self, epoch: int, score: float, improved: bool | None = None) -> bool:
        """Record ``epoch``'s ``score``; returns whether it is the new best. ``improved`` overrides the
        comparison (a distributed job decides it once, on rank 0)."""
        improved = self.improves(score) if improved is None else improved
        if improved:
            self.best_epoch, self.best_score, self.stale = epoch, float(score), 0
        else:
            self.stale += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """Patience ran out."""
        return self.patience is not None and self.stale >= self.patience


@dataclass
class TrainResult:
    """Outcome of :func:`fit_epochs`.

    Attributes:
        history: One record per epoch in the module's history format.
        best_epoch: Epoch whose weights the model holds when ``keep_best``/``restore_best`` were given
            (0: the untrained model); the last epoch when nothing was scored.
        best_score: Its monitored value (NaN when nothing was scored).
        monitor: Name of the monitored history column.
        stopped_early: Whether patience (or ``max_seconds``) ended training before ``epochs``.
        epochs_run: Training epochs run (epoch 0 not counted).
        seconds: Wall time of the whole loop.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    monitor: str = "loss"
    stopped_early: bool = False
    epochs_run: int = 0
    seconds: float = 0.0


class _SingleProcess:
    """The collectives :func:`fit_epochs` needs, for a job of one process."""

    is_main = True

    @staticmethod
    def broadcast(value: Any) -> Any:
        return value


def fit_epochs(
    name: str,
    epochs: int,
    train_epoch: Callable[[int], Mapping[str, float]],
    validate: Callable[[int], Mapping[str, float]] | None,
    stopping: EarlyStopping,
    keep_best: Callable[[int], None] | None = None,
    restore_best: Callable[[], None] | None = None,
    eval_every: int = 1,
    validate_before_training: bool = False,
    max_seconds: float | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = True,
    group: Any = None,
    log: logging.Logger = logger,
    log_level: int = logging.DEBUG,
) -> TrainResult:
    """Run up to ``epochs`` epochs of ``train_epoch``, validating every ``eval_every`` epochs (and after the
    last), keeping the best and stopping after ``stopping.patience`` validations without improvement.

    Args:
        name: Names the progress bar and the log lines.
        epochs: Maximum number of training epochs (numbered 1..epochs).
        train_epoch: Trains one epoch; returns at least ``{"loss": ...}`` (more fields go into the history).
        validate: Scores the model after an epoch; returns history columns (``valid_NDCG@20``, ...). ``None``:
            no validation; with ``stopping.monitor == "loss"`` the training loss is monitored, otherwise the
            last epoch is kept.
        stopping: The monitored column, its direction and the patience.
        keep_best: Called with the epoch when it becomes the best (snapshot the weights there).
        restore_best: Called once at the end when some epoch was kept (load the snapshot back).
        eval_every: Validate every this many epochs; the last epoch is always validated.
        validate_before_training: Validate once before the first step, recorded as epoch 0; the untrained model
            is then a candidate, so training can never end below its start.
        max_seconds: Stop after the first epoch that ends past this wall time (``None``: no limit).
        on_epoch_end: Called with each epoch's record after the best-epoch decision (rank 0 only); it may add
            fields to the record.
        show_progress: One tqdm bar over the epochs.
        group: A distributed job's :class:`~.engine.ProcessGroup`: every rank trains and validates, rank 0
            decides improvement and broadcasts the record. ``None``: one process.
        log: Logger for the per-epoch line and the summary.
        log_level: Level of the per-epoch line (INFO for trainers whose epochs take minutes).

    Returns:
        The :class:`TrainResult`.
    """
    group = group if group is not None else _SingleProcess()
    result = TrainResult(monitor=stopping.monitor)
    started = time.perf_counter()
    bar = tqdm(total=epochs, desc=f"{name} training", unit="epoch", leave=False,
               disable=not (show_progress and group.is_main))

    def close_epoch(epoch: int, record: dict[str, float], epoch_started: float, validated: bool) -> None:
        scored = validated or (validate is None and stopping.monitor in record)
        improved = False
        if scored and group.is_main:
            if stopping.monitor not in record:
                raise KeyError(f"{name}: validation returned {sorted(record)}, which lacks the monitored "
                               f"metric {stopping.monitor!r}.")
            improved = stopping.improves(record[stopping.monitor])
        record["seconds"] = time.perf_counter() - epoch_started
        record, improved = group.broadcast((record, improved))  # decided once, on rank 0
        if scored:
            stopping.update(epoch, record[stopping.monitor], improved)
            if improved and keep_best is not None:
                keep_best(epoch)
        result.history.append(record)
        if group.is_main:
            postfix = {"loss": f"{record['loss']:.4g}"}
            if scored:
                log.log(log_level, "%s epoch %d/%d: loss %.4f, %s %.4f%s (%.1fs)", name, epoch, epochs,
                        record["loss"], stopping.monitor, record[stopping.monitor], " *" if improved else "",
                        record["seconds"])
                postfix[stopping.monitor] = f"{record[stopping.monitor]:.4g}"
            bar.set_postfix(postfix | {"best": stopping.best_epoch})
            if on_epoch_end is not None:
                on_epoch_end(record)

    if validate is not None and validate_before_training:
        close_epoch(0, {"epoch": 0, "loss": math.nan, **validate(0)}, started, validated=True)
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        record: dict[str, float] = {"epoch": epoch, **train_epoch(epoch)}
        validated = validate is not None and (epoch % eval_every == 0 or epoch == epochs)
        if validated:
            record.update(validate(epoch))
        close_epoch(epoch, record, epoch_started, validated)
        result.epochs_run = epoch
        bar.update(1)
        if stopping.should_stop or (max_seconds is not None and time.perf_counter() - started > max_seconds):
            if max_seconds is not None and not stopping.should_stop and epoch < epochs:
                log.info("%s: max_seconds=%s reached after epoch %d.", name, max_seconds, epoch)
            result.stopped_early = epoch < epochs
            break
    bar.close()

    if stopping.best_epoch is None:  # nothing scored: the model as trained
        result.best_epoch = result.epochs_run
    else:
        result.best_epoch, result.best_score = stopping.best_epoch, stopping.best_score
        if restore_best is not None:
            restore_best()
    result.seconds = time.perf_counter() - started
    if group.is_main:
        log.info("%s training: best epoch %d of %d (%s %.4f), %.1f s.", name, result.best_epoch,
                 result.epochs_run, stopping.monitor, result.best_score, result.seconds)
    return result
