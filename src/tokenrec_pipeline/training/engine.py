"""The training engine: one DDP-capable epoch loop for the language-model trainers.

A trainer builds a :class:`TrainingSetup` with :func:`prepare_training` (seeds, AdamW with decay and
learning-rate groups, schedule, autocast precision, grad scaler, ``DistributedDataParallel`` under
``torchrun``) and hands :func:`run_training_loop` a ``batch_loss(rows)`` callable; the loop draws each epoch's
rows, cuts batches (optionally :func:`length_bucketed_batches`), steps the optimizer, validates, keeps the best
weights and stops early, and returns a :class:`TrainResult`. The parameters it reads are :class:`LoopConfig`
(a trainer's config subclasses it).

Also here: :class:`ProcessGroup` (this process's place in a ``torch.distributed`` job and the collectives the
loop needs), :func:`check_global_batch`, :func:`resolve_device` and :func:`limit_torch_threads`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_scheduler

from tokenrec_pipeline.core.params import dataclass_from_dict
from tokenrec_pipeline.models.precision import resolve_precision
from tokenrec_pipeline.training.loop import EarlyStopping, TrainResult, fit_epochs

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """The parameters :func:`run_training_loop` reads, shared by
    :class:`~tokenrec_pipeline.models.llm4rec.training.TrainConfig` and the autoregressive baseline's
    :class:`~tokenrec_pipeline.models.autoregressive.training.AutoregressiveTrainConfig`.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Prompts per optimisation step, over all processes: under DDP each of the W processes
            takes ``batch_size / W`` of them (so a run gives the same model whatever W is).
        learning_rate: AdamW learning rate of the backbone (and head unless ``head_learning_rate``).
        head_learning_rate: Separate learning rate for the freshly initialised head (``None``: learning_rate).
        weight_decay: AdamW decoupled weight decay (not applied to biases and norm weights).
        warmup_ratio: Fraction of all steps with linearly increasing learning rate.
        lr_scheduler: transformers scheduler name after warm-up ("linear", "constant_with_warmup", "cosine").
        max_grad_norm: Gradient clipping norm (0 disables).
        samples_per_epoch: Random subset of training prompts per epoch (``None``: all), for slow CPUs; under
            DDP the subset is shared out, so each of its prompts is seen once per epoch by one process.
        precision: "auto" | "fp32" | "bf16" | "fp16" autocast of the forward pass (``models.precision``: auto =
            bf16 on CUDA with bf16 and on CPUs with AVX512-BF16/AMX, fp16 on older GPUs, fp32 elsewhere).
        monitor: Metric for early stopping / best checkpoint ("loss" without a validation function).
        monitor_mode: "max" or "min".
        patience: Epochs without improvement before stopping (``None``: never stop early).
        validate_before_training: Validate once before the first step (recorded as epoch 0); the untrained
            model is then a candidate for the kept checkpoint, so training can never end below its start.
        min_delta: Smallest change counted as an improvement.
        restore_best: Load the best epoch's weights back at the end.
        seed: Seeds sampling, dropout (``seed + rank`` under DDP) and the epoch subsets.
        show_progress: tqdm progress bar per epoch.
        length_bucketing: Cut each epoch's batches from runs of about 50 batches sorted by prompt length, then
            shuffle the batches (:func:`length_bucketed_batches`): less padding, the same prompts per epoch.
        num_threads: torch intra-op threads during training (``None``: leave torch's setting). On a CPU
            shared with other processes, 1 thread is often several times faster than oversubscribing.
    """

    PARAMETERS: ClassVar[str] = "training"  # how error messages name the parameter block

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    samples_per_epoch: int | None = None
    precision: str = "auto"
    monitor: str = "valid_NDCG@20"
    monitor_mode: str = "max"
    patience: int | None = 2
    validate_before_training: bool = False
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    show_progress: bool = True
    length_bucketing: bool = False
    num_threads: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Any:
        """Build from a parameters mapping, rejecting unknown keys."""
        return dataclass_from_dict(cls, values, cls.PARAMETERS)


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a ``torch.distributed`` job (``rank 0 of 1`` when not distributed).

    Attributes:
        rank: This process's rank.
        world_size: Number of processes W.
        device: Device of the tensors collectives exchange (NCCL needs CUDA tensors, gloo takes CPU ones).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device) -> ProcessGroup:
        """The initialised default process group (``torchrun`` sets it up), else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, decides early stopping and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch: every W-th row from ``rank`` (what ``DistributedSampler``
        gives); the parts are disjoint and cover ``rows``, sizes differ by at most one."""
        return rows[self.rank :: self.world_size]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0 (``None`` on the others)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``batch_size`` is the global batch: it must split evenly over the ``world_size`` processes."""
    if batch_size % world_size:
        raise ValueError(
            f"llm4rec training batch_size {batch_size} is the global batch and must divide by the "
            f"{world_size} processes (nproc_per_node x nnodes)."
        )


def _parameter_groups(model: nn.Module, config: LoopConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay for matrices only; optional separate learning rates for the ``head.*`` parameters
    and for the ID-token table ``id_embeddings.*`` (which never decays: it is the tokens' only representation)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if name.startswith("head.") else "tokens" if name.startswith("id_embeddings.") else "backbone"
        decays = parameter.ndim >= 2 and part != "tokens"
        groups.setdefault((part, decays), []).append(parameter)
    rates = {
        "head": config.head_learning_rate or config.learning_rate,
        "tokens": getattr(config, "token_learning_rate", None) or config.learning_rate,
        "backbone": config.learning_rate,
    }
    return [
        {"params": params, "lr": rates[part], "weight_decay": config.weight_decay if decays else 0.0}
        for (part, decays), params in groups.items()
    ]


@dataclass
class TrainingSetup:
    """What :func:`prepare_training` builds for :func:`run_training_loop` (and for the caller's batch loss).

    Attributes:
        config: The training parameters.
        monitor, mode: Monitored metric and "max"/"min" ("loss"/"min" without a validation function).
        device: The model's device.
        generator: Seeded CPU generator of the epoch subsets (and of anything else the batch loss samples).
        per_epoch, steps_per_epoch: Prompts and optimisation steps per epoch.
        optimizer, scheduler, scaler: AdamW, the transformers learning-rate schedule, the fp16 grad scaler.
        precision: The resolved training precision ("fp32", "bf16" or "fp16"; ``models.precision``).
        trainable: ``(name, parameter)`` pairs that require gradients.
        group: This process's place in the job (rank 0 of 1 when not distributed).
        forward_model: What the batch loss calls for the training forward pass: the model itself, or its
            ``DistributedDataParallel`` wrapper (which averages the gradients over ranks in ``backward``).
    """

    config: LoopConfig
    monitor: str
    mode: str
    device: torch.device
    generator: torch.Generator
    per_epoch: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: str
    scaler: torch.amp.GradScaler
    trainable: list[tuple[str, nn.Parameter]]
    group: ProcessGroup = field(default_factory=ProcessGroup)
    forward_model: nn.Module | None = None


def prepare_training(
    model: nn.Module,
    config: LoopConfig,
    n_samples: int,
    validate_fn: Callable[..., Any] | None,
    distributed: bool = False,
) -> TrainingSetup:
    """Validate the monitor, seed torch and the sampling generator, build optimizer, schedule and scaler.

    With ``distributed`` (an initialised ``torch.distributed`` process group, e.g. under ``torchrun``) the
    model is wrapped in ``DistributedDataParallel``; ``config.batch_size`` stays the global batch and must
    divide by the world size.
    """
    monitor = config.monitor if validate_fn is not None else "loss"
    mode = config.monitor_mode if validate_fn is not None else "min"
    if mode not in ("max", "min"):
        raise ValueError(f"monitor_mode must be 'max' or 'min', got {mode!r}.")
    device: torch.device = model.device  # type: ignore[assignment]
    group = ProcessGroup.current(device) if distributed else ProcessGroup(device=device)
    check_global_batch(config.batch_size, group.world_size)
    # Dropout masks differ per rank (as they would between the rows of one big batch); the generator below
    # is the same on every rank, so all ranks draw the same epoch subsets and negatives.
    torch.manual_seed(config.seed + group.rank)
    generator = torch.Generator().manual_seed(config.seed)  # subsets (and negatives)
    per_epoch = min(config.samples_per_epoch or n_samples, n_samples)
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.learning_rate)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=int(round(config.warmup_ratio * total_steps)),
        num_training_steps=total_steps,
    )
    precision = resolve_precision(config.precision, device, inference=False, parameter=f"{config.PARAMETERS}.precision")
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    forward_model = model
    if group.distributed:
        # find_unused_parameters: some trainable parameters never reach the loss (BERT's pooler, T5's
        # decoder under encoder pooling); DDP would otherwise wait for their gradients forever.
        forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    return TrainingSetup(
        config=config,
        monitor=monitor,
        mode=mode,
        device=device,
        generator=generator,
        per_epoch=per_epoch,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        precision=precision,
        scaler=scaler,
        trainable=trainable,
        group=group,
        forward_model=forward_model,
    )


def length_bucketed_batches(
    order: torch.Tensor, lengths: torch.Tensor, batch_size: int, generator: torch.Generator, bucket_batches: int = 50
) -> list[torch.Tensor]:
    """Batches of ``order`` with little padding: each run of ``bucket_batches * batch_size`` rows (in the epoch's
    random order) is sorted by length and cut into batches, then all batches are shuffled with ``generator``.

    Args:
        order: (N,) row indices of the epoch, already shuffled.
        lengths: (n_samples,) token length of every row.
        batch_size: Rows per batch.
        generator: Shuffles the batches (the same on every DDP rank, so ranks stay in step).
        bucket_batches: Batches per sorted run (larger: less padding, batches less random).

    Returns:
        The batches; together they hold every row of ``order`` once.
    """
    batches: list[torch.Tensor] = []
    run = batch_size * bucket_batches
    for start in range(0, order.numel(), run):
        chunk = order[start : start + run]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def run_training_loop(
    model: nn.Module,
    n_samples: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    setup: TrainingSetup,
    validate_fn: Callable[[Any], Mapping[str, float]] | None,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
    name: str,
    log: logging.Logger = logger,
    on_epoch_start: Callable[[torch.Tensor], None] | None = None,
    lengths: torch.Tensor | None = None,
) -> TrainResult:
    """The language models' epoch: optimiser steps over batches of rows, run by :func:`~.loop.fit_epochs`.

    Each epoch draws a random ``per_epoch`` subset of the ``n_samples`` rows (``setup.generator``; passed to
    ``on_epoch_start``), calls ``batch_loss(rows)`` per batch of row indices (the callable does its own
    forward pass, through ``setup.forward_model``, and autocast) and steps the optimizer (grad scaling,
    clipping, schedule). :func:`~.loop.fit_epochs` then validates (``validate_fn(model)``, in eval mode),
    keeps the best weights and stops early. ``name`` prefixes the progress bars and the log lines written to
    ``log``. With ``lengths`` (token length per row) and ``config.length_bucketing`` the batches are cut by
    :func:`length_bucketed_batches`.

    Distributed (``setup.group`` has W > 1 ranks): every rank draws the same subset and cuts the same global
    batches of ``batch_size`` rows; each rank computes the loss of its shard (``ProcessGroup.shard``) weighted
    by its share of the batch, so DDP's gradient average equals the gradient of the global batch mean, and a
    rank whose shard is empty (last batch shorter than W) contributes a zero-weighted loss to keep the
    collectives in step. ``validate_fn`` runs on every rank (it may shard the work); rank 0's metrics count,
    rank 0 decides improvement and stopping and broadcasts the epoch record, so every rank returns the same
    :class:`TrainResult`. Logging, the progress bar and ``on_epoch_end`` happen on rank 0 only.

    Returns:
        The :class:`TrainResult`; the model ends in eval mode holding the best epoch's weights.
    """
    config = setup.config
    group = setup.group
    optimizer, scheduler, scaler, trainable = setup.optimizer, setup.scheduler, setup.scaler, setup.trainable
    best_state: dict[str, torch.Tensor] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        order = torch.randperm(n_samples, generator=setup.generator)[: setup.per_epoch]
        if on_epoch_start is not None:
            on_epoch_start(order)
        loss_sum, seen = 0.0, 0
        progress = tqdm(total=setup.steps_per_epoch, disable=not (config.show_progress and group.is_main),
                        desc=f"{name} epoch {epoch}", leave=False)
        if config.length_bucketing and lengths is not None:
            batches = length_bucketed_batches(order, lengths, config.batch_size, setup.generator)
        else:
            batches = list(order.split(config.batch_size))
        for rows in batches:
            local = group.shard(rows)
            if local.numel():
                unweighted = batch_loss(local)
                loss = unweighted * (local.numel() * group.world_size / rows.numel())
            else:
                unweighted = batch_loss(rows[:1])
                loss = unweighted * 0.0
            scaler.scale(loss).backward()
            if config.max_grad_norm and config.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += float(unweighted.detach()) * local.numel()
            seen += local.numel()
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}")
        progress.close()
        loss_sum, seen_total = group.sum([loss_sum, seen])
        return {"loss": loss_sum / seen_total, "lr": float(scheduler.get_last_lr()[0]), "samples": float(seen_total)}

    def validate(epoch: int) -> dict[str, float]:
        model.eval()
        metrics = {key: float(value) for key, value in validate_fn(model).items()}  # every rank: may be sharded
        return metrics if epoch else {"lr": 0.0, "samples": 0.0, **metrics}

    def keep_best(epoch: int) -> None:
        if config.restore_best:
            best_state.update({key: p.detach().to("cpu", copy=True) for key, p in trainable})

    def restore_best() -> None:
        if config.restore_best and best_state:
            with torch.no_grad():
                for key, parameter in trainable:
                    parameter.copy_(best_state[key].to(parameter.device))

    stopping = EarlyStopping(setup.monitor, setup.mode, config.patience, config.min_delta)
    result = fit_epochs(
        name, config.epochs, train_epoch, validate if validate_fn is not None else None, stopping,
        keep_best=keep_best, restore_best=restore_best, validate_before_training=config.validate_before_training,
        on_epoch_end=on_epoch_end, show_progress=config.show_progress, group=group, log=log, log_level=logging.INFO,
    )
    model.eval()
    return result
