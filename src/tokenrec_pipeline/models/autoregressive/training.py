"""Teacher-forced training of the autoregressive baseline: :class:`AutoregressiveTrainConfig` and
:func:`train_autoregressive` (cross-entropy of the target item's K codes on the shared loop of
:mod:`tokenrec_pipeline.training.engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from tokenrec_pipeline.core.params import limit_torch_threads
from tokenrec_pipeline.models.autoregressive.model import AutoregressiveRecommender
from tokenrec_pipeline.models.precision import autocast
from tokenrec_pipeline.training.engine import (
    LoopConfig,
    TrainResult,
    prepare_training,
    run_training_loop,
)

logger = logging.getLogger(__name__)


@dataclass
class AutoregressiveTrainConfig(LoopConfig):
    """Training parameters of :func:`train_autoregressive`: llm4rec's
    :class:`~tokenrec_pipeline.training.engine.LoopConfig` (same meanings; ``head_learning_rate`` is the
    decoder head's, 1e-3 by default) plus label smoothing; without ``validate_fn`` the training loss is
    monitored.

    Attributes:
        label_smoothing: Cross-entropy label smoothing.

    The defaults are ``autoregressive.training`` of ``conf/base/parameters_autoregressive.yml``, kept in step by
    ``tests/test_parameter_defaults.py``; the ones below replace :class:`LoopConfig`'s where they differ.
    """

    PARAMETERS: ClassVar[str] = "autoregressive training"

    epochs: int = 4
    head_learning_rate: float | None = 1e-3
    samples_per_epoch: int | None = 1000
    label_smoothing: float = 0.0


def train_autoregressive(
    model: AutoregressiveRecommender,
    prompts: Sequence[str],
    target_items: Sequence[int] | Tensor | np.ndarray,
    item_codes: Tensor | np.ndarray,
    config: AutoregressiveTrainConfig | None = None,
    validate_fn: Callable[[AutoregressiveRecommender], Mapping[str, float]] | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Teacher-forced training: cross-entropy of the target item's K codes, AdamW, seeded.

    Args:
        model: From :func:`build_autoregressive`.
        prompts: N training prompts (the llm4rec stage's prompts).
        target_items: N target item ids (rows of ``item_codes``).
        item_codes: (I, K) item code table (the tokenization stage's item token table).
        config: Training parameters.
        validate_fn: Called after each epoch in eval mode; returns metrics (e.g. from
            :func:`evaluate_generation`). Without it the training loss is monitored.
        on_epoch_end: Receives each epoch's record.

    Returns:
        llm4rec's :class:`~tokenrec_pipeline.training.engine.TrainResult`; the model ends in eval mode
        holding the best epoch's weights.
    """
    config = config or AutoregressiveTrainConfig()
    prompts = list(prompts)
    n = len(prompts)
    targets = torch.as_tensor(np.asarray(target_items.cpu() if isinstance(target_items, Tensor) else target_items))
    targets = targets.long()
    codes = torch.as_tensor(np.asarray(item_codes.cpu() if isinstance(item_codes, Tensor) else item_codes)).long()
    if n == 0:
        raise ValueError("No training prompts; check the prompting stage output.")
    if targets.shape != (n,):
        raise ValueError(f"Got {targets.numel()} targets for {n} prompts; pass one target per prompt.")
    if codes.ndim != 2 or codes.shape[1] != model.n_codebooks:
        raise ValueError(f"item_codes must be (n_items, {model.n_codebooks}), got {tuple(codes.shape)}.")
    if codes.min() < 0 or codes.max() >= model.codebook_size:
        raise ValueError(f"item codes must lie in [0, {model.codebook_size}); check the tokenizer's codebook_size.")
    if targets.min() < 0 or targets.max() >= codes.shape[0]:
        raise ValueError(f"Target ids must be rows of item_codes (0..{codes.shape[0] - 1}).")
    with limit_torch_threads(config.num_threads):
        return _train(model, prompts, codes[targets], config, validate_fn, on_epoch_end)


def _train(
    model: AutoregressiveRecommender,
    prompts: list[str],
    target_codes: Tensor,
    config: AutoregressiveTrainConfig,
    validate_fn: Callable[[AutoregressiveRecommender], Mapping[str, float]] | None,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    """Body of :func:`train_autoregressive`; ``target_codes`` is (N, K)."""
    setup = prepare_training(model, config, len(prompts), validate_fn)
    device, precision = setup.device, setup.precision

    token_ids = model.backbone.token_ids(prompts)  # once, not every epoch
    lengths = torch.tensor([len(ids) for ids in token_ids])

    def batch_loss(rows: Tensor) -> Tensor:
        batch = model.backbone.collate([token_ids[i] for i in rows.tolist()])
        with autocast(device, precision):
            return model.loss(
                **batch, target_codes=target_codes[rows].to(device), label_smoothing=config.label_smoothing
            )

    return run_training_loop(
        model, len(prompts), batch_loss, setup, validate_fn, on_epoch_end, "autoregressive", log=logger,
        lengths=lengths,
    )
