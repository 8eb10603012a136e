"""Fine-tuning LLM4Rec: :class:`TrainConfig` and :func:`train_llm4rec` (the TokenRec objective of
:mod:`~tokenrec_pipeline.models.llm4rec.loss` on the shared loop of :mod:`tokenrec_pipeline.training.engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from tokenrec_pipeline.core.params import limit_torch_threads
from tokenrec_pipeline.models.item_space import queries_to_space
from tokenrec_pipeline.models.llm4rec.loss import (
    padded_history_table,
    sample_prompt_negatives,
    softmax_loss,
    tokenrec_loss,
)
from tokenrec_pipeline.models.llm4rec.model import LLM4Rec
from tokenrec_pipeline.models.precision import autocast
from tokenrec_pipeline.training.engine import (
    LoopConfig,
    TrainResult,
    prepare_training,
    run_training_loop,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(LoopConfig):
    """Training parameters of :func:`train_llm4rec`: :class:`LoopConfig` plus the TokenRec objective.

    Attributes:
        loss: "cosine" (the paper's: 1 - cos for the target, max(0, cos - gamma) for sampled negatives) or
            "softmax" (cross-entropy over all items on cosine / ``temperature``; see :func:`softmax_loss`).
        temperature: Softmax temperature of the "softmax" loss.
        num_negatives: n sampled negatives per prompt (authors: 1; "cosine" loss only).
        gamma: Margin of the negative term (authors: 0; "cosine" loss only).
        exclude_history_from_negatives: Never sample a prompt's history items as negatives (nor put them in
            the softmax).
        token_learning_rate: Learning rate of the ID-token embedding table (``model.id_token_table``;
            ``None``: learning_rate). No weight decay applies to it.

    The defaults are ``llm4rec.training`` of ``conf/base/parameters_llm4rec.yml`` (the default recipe), kept in step
    by ``tests/test_parameter_defaults.py``; the ones below replace :class:`LoopConfig`'s where they differ.
    """

    PARAMETERS: ClassVar[str] = "llm4rec training"

    epochs: int = 4
    head_learning_rate: float | None = 1e-3
    validate_before_training: bool = True
    length_bucketing: bool = True
    loss: str = "cosine"
    temperature: float = 0.1
    num_negatives: int = 1
    gamma: float = 0.0
    exclude_history_from_negatives: bool = True
    token_learning_rate: float | None = 1e-3


def train_llm4rec(
    model: LLM4Rec,
    prompts: Sequence[str],
    target_items: Sequence[int] | torch.Tensor,
    item_vectors: torch.Tensor,
    config: TrainConfig | None = None,
    histories: Sequence[Sequence[int]] | None = None,
    validate_fn: Callable[[LLM4Rec], Mapping[str, float]] | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    distributed: bool = False,
) -> TrainResult:
    """Fine-tune LLM4Rec with the paper's loss; early stopping on validation; best weights kept.

    Args:
        model: From :func:`build_llm4rec` (or :func:`load_llm4rec` with ``trainable=True``).
        prompts: N training prompt strings.
        target_items: N target item ids, rows of ``item_vectors``.
        item_vectors: (I, d) item CF embeddings q_j (fixed, not trained).
        config: Training parameters.
        histories: Optional N lists of the prompt's history item ids (kept out of the negatives).
        validate_fn: Called after each epoch with the model in eval mode; returns metrics such as
            ``{"valid_NDCG@20": ...}``. Without it the training loss is monitored.
        on_epoch_end: Receives each epoch's record (e.g. to log it to MLflow); rank 0 only under DDP.
        distributed: Train as one rank of the initialised ``torch.distributed`` process group (every rank
            calls this with the same arguments); see :func:`run_training_loop` for what is shared how.

    Returns:
        The :class:`TrainResult`; the model ends in eval mode holding the best epoch's weights.
    """
    config = config or TrainConfig()
    with limit_torch_threads(config.num_threads):
        return _train(
            model, prompts, target_items, item_vectors, config, histories, validate_fn, on_epoch_end, distributed
        )


def _train(
    model: LLM4Rec,
    prompts: Sequence[str],
    target_items: Sequence[int] | torch.Tensor,
    item_vectors: torch.Tensor,
    config: TrainConfig,
    histories: Sequence[Sequence[int]] | None,
    validate_fn: Callable[[LLM4Rec], Mapping[str, float]] | None,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
    distributed: bool = False,
) -> TrainResult:
    """Body of :func:`train_llm4rec` (arguments documented there)."""
    prompts = list(prompts)  # positional access even for a pandas Series with a non-default index
    n_samples = len(prompts)
    targets = torch.as_tensor(list(target_items) if not torch.is_tensor(target_items) else target_items).long()
    if targets.shape != (n_samples,):
        raise ValueError(f"Got {targets.shape[0]} targets for {n_samples} prompts; pass one target per prompt.")
    if item_vectors.ndim != 2 or item_vectors.shape[1] != model.config.cf_dim:
        raise ValueError(f"item_vectors must be (n_items, {model.config.cf_dim}), got {tuple(item_vectors.shape)}.")
    n_items = item_vectors.shape[0]
    if n_samples == 0:
        raise ValueError("No training prompts; check the prompting stage output.")
    if targets.min() < 0 or targets.max() >= n_items:
        raise ValueError(f"Target ids must be rows of item_vectors (0..{n_items - 1}).")
    if histories is not None:
        histories = list(histories)
    if histories is not None and len(histories) != n_samples:
        raise ValueError(f"Got {len(histories)} histories for {n_samples} prompts.")
    if config.loss not in ("cosine", "softmax"):
        raise ValueError(f"llm4rec.training.loss must be 'cosine' or 'softmax', got {config.loss!r}.")
    if config.loss == "softmax" and not config.temperature > 0:
        raise ValueError(f"llm4rec.training.temperature must be > 0, got {config.temperature!r}.")
    use_history = histories is not None and config.exclude_history_from_negatives
    history_table = padded_history_table(histories) if use_history else None  # type: ignore[arg-type]
    setup = prepare_training(model, config, n_samples, validate_fn, distributed)
    device, generator, precision = setup.device, setup.generator, setup.precision
    space = model.config.item_space
    unit_items = model.items_in_space(item_vectors).to(device)  # (I, d') unit vectors of the item space
    negatives = torch.zeros((n_samples, config.num_negatives), dtype=torch.long)

    def draw_negatives(order: torch.Tensor) -> None:
        # The whole epoch's negatives in one draw from the shared generator: every rank draws the same, so
        # the generator stays in step across ranks and a prompt's negatives do not depend on the batching.
        negatives[order] = sample_prompt_negatives(
            targets[order],
            n_items,
            config.num_negatives,
            generator,
            exclude=history_table[order] if history_table is not None else None,
        )

    token_ids = model.backbone.token_ids(prompts)  # once, not every epoch
    lengths = torch.tensor([len(ids) for ids in token_ids])

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        batch = model.backbone.collate([token_ids[i] for i in rows.tolist()])
        with autocast(device, precision):
            z = setup.forward_model(**batch)
        query = queries_to_space(z.float(), space)  # cos(query, item) is the score the index ranks by
        if config.loss == "softmax":
            exclude = history_table[rows].to(device) if history_table is not None else None
            return softmax_loss(query, unit_items, targets[rows].to(device), config.temperature, exclude)
        return tokenrec_loss(
            query, unit_items[targets[rows].to(device)], unit_items[negatives[rows].to(device)], config.gamma
        )

    return run_training_loop(
        model, n_samples, batch_loss, setup, validate_fn, on_epoch_end, "llm4rec", log=logger,
        on_epoch_start=draw_negatives, lengths=lengths,
    )
