"""BPR training of LightGCN / MF with validation NDCG@20 early stopping (:func:`train_cf`).

Both models train with BPR on uniformly sampled negatives that are never a training positive of
the user, select the epoch by validation NDCG@20 (seen users, history = train items, target =
valid item) with early stopping, and return the best epoch's propagated embeddings.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch_geometric.nn.models.lightgcn import BPRLoss

from tokenrec_pipeline.core.params import resolve_device
from tokenrec_pipeline.evaluation.ranking import EvalInputs, RankingResult, eval_inputs_from_splits, evaluate_inputs
from tokenrec_pipeline.models.cf.config import SELECTION_METRIC, CFConfig, CFResult
from tokenrec_pipeline.models.cf.data import (
    TrainInteractions,
    positive_keys,
    sample_bpr_negatives,
    train_interactions_from_splits,
)
from tokenrec_pipeline.models.cf.fold_in import fold_in_scales
from tokenrec_pipeline.models.cf.models import build_cf_model, build_edge_index, normalized_adjacency
from tokenrec_pipeline.training.loop import EarlyStopping, fit_epochs, valid_metrics

logger = logging.getLogger(__name__)


def make_optimizer(config: CFConfig, params: Sequence[Tensor]) -> torch.optim.Optimizer:
    """Adam / AdamW over ``params``; the fused single-kernel implementation where torch has one.

    The embedding table is updated densely every step, so the optimiser touches every parameter:
    the fused kernel does that in one pass instead of about ten elementwise passes (same update
    rule, float rounding aside).
    """
    params = list(params)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    device_type = params[0].device.type if params else "cpu"
    fused = device_type in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.float64) for p in params)
    return cls(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


class _GatherRows(torch.autograd.Function):
    """``table[index]`` whose backward scatters the rows' gradients with one ``index_add_``.

    Advanced indexing's backward sorts the index and zero-fills through ``index_put_``; on CPU
    ``index_add_`` runs sequentially in index order, so it is deterministic and gives the same sums.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        return grad.new_zeros((ctx.n_rows, grad.shape[1])).index_add_(0, index, grad), None


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of ``table`` (differentiable); :class:`_GatherRows` on CPU, plain indexing
    elsewhere (CUDA's ``index_add_`` uses atomics: not bit-reproducible)."""
    return _GatherRows.apply(table, index) if table.device.type == "cpu" else table[index]


def bpr_step(
    model: nn.Module,
    adjacency: Tensor | None,
    optimizer: torch.optim.Optimizer,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    lambda_reg: float,
) -> Tensor:
    """One BPR step on node ids (items already offset by ``n_seen_users``); returns the detached loss.

    Propagates the whole graph once, gathers the batch's user / positive / negative rows in one
    index (one scatter in the backward pass instead of three, :func:`gather_rows`) and regularises
    the layer-0 embeddings of every (u, i, j) occurrence, as LightGCN does.
    """
    node_ids = torch.cat([users, positives, negatives])
    user_vec, pos_vec, neg_vec = gather_rows(model.get_embedding(adjacency), node_ids).chunk(3)
    pos_rank = (user_vec * pos_vec).sum(dim=-1)
    neg_rank = (user_vec * neg_vec).sum(dim=-1)
    # = model.recommendation_loss(pos_rank, neg_rank, node_id=node_ids, lambda_reg=lambda_reg),
    # with the layer-0 rows gathered by gather_rows too.
    loss = BPRLoss(lambda_reg)(pos_rank, neg_rank, gather_rows(model.embedding.weight, node_ids))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class _Validator:
    """Full-ranking validation of the seen users (``evaluate_inputs`` on the epoch's embeddings);
    the validation users' ids are put on the device once, not every epoch."""

    def __init__(self, valid: EvalInputs, n_seen_users: int, config: CFConfig, device: torch.device) -> None:
        self.valid = valid
        self.n_seen_users = n_seen_users
        self.config = config
        self.users = torch.as_tensor(valid.users, device=device)

    def __call__(self, emb: Tensor) -> RankingResult:
        emb = emb.detach()
        return evaluate_inputs(
            self.valid,
            user_vectors=emb[self.users],
            item_vectors=emb[self.n_seen_users :],
            ks=self.config.eval_ks,
            batch_size=self.config.eval_batch_size,
        )


def train_cf(train: TrainInteractions, config: CFConfig, valid: EvalInputs | None = None) -> CFResult:
    """Train LightGCN or MF with BPR; early-stop on ``valid`` NDCG@20 and keep the best epoch.

    ``valid`` should be the seen users' validation inputs (history = train items, target = valid
    item; :func:`~tokenrec_pipeline.evaluation.ranking.eval_inputs_from_splits`). Without it the
    model trains for ``config.epochs`` epochs and the last epoch is returned.
    Same seed, same data, same device -> identical embeddings (on CPU bit for bit).
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    n_seen, n_items = train.n_seen_users, train.n_items
    n_nodes = n_seen + n_items
    if len(train.users) == 0:
        raise ValueError("no training interactions: interactions_split has no rows with split == 'train'.")

    model = build_cf_model(config, n_nodes).to(device)
    adjacency = normalized_adjacency(build_edge_index(train.users, train.items, n_seen), n_nodes).to(device)
    optimizer = make_optimizer(config, model.parameters())
    generator = torch.Generator().manual_seed(config.seed)
    pos_keys = positive_keys(train.users, train.items, n_items)
    users_t = torch.tensor(train.users, dtype=torch.int64)
    items_t = torch.tensor(train.items, dtype=torch.int64)
    n_pairs = len(users_t)
    validator = _Validator(valid, n_seen, config, device) if valid is not None and len(valid) else None

    best: dict[str, Any] = {}  # the best epoch's embeddings, raw parameters and validation metrics
    last_valid: dict[str, Any] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        # Shuffle and sample on the host (seeded CPU generator: same draws on every device), then
        # move the epoch's node ids to the device once; batches are slices, no per-batch copies.
        perm = torch.randperm(n_pairs, generator=generator)
        negatives = sample_bpr_negatives(users_t[perm], pos_keys, n_items, generator)
        batch_users = users_t[perm].to(device)
        batch_pos = (items_t[perm] + n_seen).to(device)
        batch_neg = (negatives + n_seen).to(device)
        epoch_loss = torch.zeros((), device=device)  # summed on device: no host sync per batch
        for s in range(0, n_pairs, config.batch_size):
            e = min(s + config.batch_size, n_pairs)
            loss = bpr_step(model, adjacency, optimizer, batch_users[s:e], batch_pos[s:e], batch_neg[s:e],
                            config.lambda_reg)
            epoch_loss += loss * (e - s)
        return {"loss": float(epoch_loss) / n_pairs}

    def validate(epoch: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            last_valid["emb"] = model.get_embedding(adjacency)
        last_valid["metrics"] = validator(last_valid["emb"]).metrics
        return valid_metrics(last_valid["metrics"])

    def keep_best(epoch: int) -> None:
        best["emb"] = last_valid["emb"].detach().cpu().clone()
        best["state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best["metrics"] = dict(last_valid["metrics"])

    stopping = EarlyStopping(f"valid_{SELECTION_METRIC}", "max", config.patience)
    result = fit_epochs(config.model, config.epochs, train_epoch, validate if validator is not None else None,
                        stopping, keep_best=keep_best, eval_every=config.eval_every, show_progress=config.show_progress,
                        log=logger)
    best_epoch, epochs_run, best_metrics = result.best_epoch, result.epochs_run, best.get("metrics", {})
    if not best:  # no validation: keep the last epoch
        model.eval()
        with torch.no_grad():
            best["emb"] = model.get_embedding(adjacency).detach().cpu().clone()
        best["state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    best_emb, best_state = best["emb"], best["state"]

    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        basis = model.fold_in_basis(adjacency).detach().cpu().clone()
    user_scales, item_scales = fold_in_scales(train, best_emb, basis)
    fit_seconds = time.perf_counter() - start
    frame = pd.DataFrame(result.history)
    logger.info(
        "%s: best epoch %d of %d (valid %s=%.4f, HR@20=%.4f), %.1f s on %s",
        config.model,
        best_epoch,
        epochs_run,
        SELECTION_METRIC,
        best_metrics.get(SELECTION_METRIC, float("nan")),
        best_metrics.get("HR@20", float("nan")),
        fit_seconds,
        device,
    )
    return CFResult(
        model_name=config.model,
        user_embeddings=best_emb[:n_seen].contiguous(),
        item_embeddings=best_emb[n_seen:].contiguous(),
        best_epoch=best_epoch,
        history=frame,
        best_valid_metrics=best_metrics,
        state_dict=best_state,
        user_degree=train.user_degree,
        item_degree=train.item_degree,
        user_fold_in_basis=basis[:n_seen].contiguous(),
        item_fold_in_basis=basis[n_seen:].contiguous(),
        user_fold_in_scales=user_scales,
        item_fold_in_scales=item_scales,
        config=copy.deepcopy(config),
        epochs_run=epochs_run,
        fit_seconds=fit_seconds,
        params={f"cf.{k}": v for k, v in asdict(config).items()},
    )


def train_lightgcn(
    train: TrainInteractions, config: CFConfig | None = None, valid: EvalInputs | None = None
) -> CFResult:
    """:func:`train_cf` with ``model="lightgcn"``."""
    return train_cf(train, replace(config or CFConfig(), model="lightgcn"), valid)


def train_mf(train: TrainInteractions, config: CFConfig | None = None, valid: EvalInputs | None = None) -> CFResult:
    """:func:`train_cf` with ``model="mf"`` (BPR-MF, the "w/o high-order" ablation)."""
    return train_cf(train, replace(config or CFConfig(), model="mf"), valid)


def train_cf_from_splits(interactions_split: pd.DataFrame, config: CFConfig) -> CFResult:
    """Train on the ``train`` rows, early-stop on the seen users' ``valid`` rows."""
    train = train_interactions_from_splits(interactions_split)
    valid = eval_inputs_from_splits(interactions_split, "seen", "valid")
    return train_cf(train, config, valid)
