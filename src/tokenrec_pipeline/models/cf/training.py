"""Collaborative embeddings (LightGCN, BPR-MF) and the popularity baseline.

* LightGCN is ``torch_geometric.nn.models.LightGCN`` propagated over the TRAIN graph only: a
  bipartite graph whose nodes are the seen users ``0..n_seen_users-1`` followed by the items
  (item ``i`` is node ``n_seen_users + i``). Unseen users are never nodes; they are folded in.
* MF is a plain embedding table scored by dot product ("w/o high-order knowledge" ablation),
  trained by the same loop and the same BPR loss.
* Both train with BPR on uniformly sampled negatives that are never a training positive of the
  user, select the epoch by validation NDCG@20 (seen users, history = train items, target = valid
  item) with early stopping, and return the best epoch's propagated embeddings.
* Pop ranks by the number of TRAIN interactions per item.

Every metric goes through :mod:`tokenrec_pipeline.models.evaluation`.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN
from torch_geometric.nn.models.lightgcn import BPRLoss
from torch_geometric.utils import to_torch_csr_tensor
from tqdm.auto import tqdm

from tokenrec_pipeline.models.evaluation import (
    DEFAULT_KS,
    EvalInputs,
    GroupSpec,
    Histories,
    RankingResult,
    ScoreFn,
    eval_inputs_from_splits,
    evaluate_inputs,
    evaluate_user_groups,
    histories_to_csr,
    split_sizes,
)

logger = logging.getLogger(__name__)

SELECTION_METRIC = "NDCG@20"
"""Validation metric that picks the epoch (DESIGN.md: model selection on validation only)."""


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None and str(device) not in ("", "auto"):
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class TrainInteractions:
    """Training (user, item) pairs of the seen users plus the id-space sizes."""

    users: np.ndarray
    items: np.ndarray
    n_seen_users: int
    n_items: int

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError(f"{len(self.users)} train users but {len(self.items)} train items; need pairs.")
        if len(self.users) and (self.users.min() < 0 or self.users.max() >= self.n_seen_users):
            raise ValueError(f"train user ids must lie in [0, n_seen_users={self.n_seen_users}).")
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise ValueError(f"train item ids must lie in [0, n_items={self.n_items}).")

    @property
    def user_degree(self) -> np.ndarray:
        """Number of train items per seen user."""
        return np.bincount(self.users, minlength=self.n_seen_users).astype(np.int64)

    @property
    def item_degree(self) -> np.ndarray:
        """Number of train users per item (= Pop's counts)."""
        return item_popularity(self.items, self.n_items)


def train_interactions_from_splits(interactions_split: pd.DataFrame) -> TrainInteractions:
    """The ``split == "train"`` rows of the preprocessing output as arrays, with the id-space sizes."""
    sizes = split_sizes(interactions_split)
    train = interactions_split[interactions_split["split"].to_numpy() == "train"]
    return TrainInteractions(
        users=train["user_id"].to_numpy(dtype=np.int64),
        items=train["item_id"].to_numpy(dtype=np.int64),
        n_seen_users=sizes.n_seen_users,
        n_items=sizes.n_items,
    )


def build_edge_index(train_users: np.ndarray, train_items: np.ndarray, n_seen_users: int) -> Tensor:
    """Undirected bipartite train graph as ``(2, 2E)`` edge_index; item ``i`` is node ``n_seen_users + i``."""
    u = torch.tensor(np.asarray(train_users, dtype=np.int64))
    i = torch.tensor(np.asarray(train_items, dtype=np.int64)) + n_seen_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def normalized_adjacency(edge_index: Tensor, n_nodes: int) -> Tensor:
    """Symmetric ``D^-1/2 A D^-1/2`` of an undirected graph as a torch sparse CSR matrix.

    ``LGConv`` would recompute this normalisation from ``edge_index`` on every forward pass;
    computing it once and propagating with sparse matmuls is several times faster on CPU and gives
    the same embeddings (see :class:`SparseLightGCN`). Row pointers and column indices are int32
    whenever the graph fits (MKL and cuSPARSE work on int32 indices; int64 ones are converted on
    every product), int64 otherwise.
    """
    edge_index, weight = gcn_norm(edge_index, None, n_nodes, add_self_loops=False)
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta" / invariant-check notices: harmless here.
        warnings.simplefilter("ignore", UserWarning)
        adjacency = to_torch_csr_tensor(edge_index, weight, size=(n_nodes, n_nodes))
        if adjacency.values().numel() < 2**31 and n_nodes < 2**31:
            adjacency = torch.sparse_csr_tensor(
                adjacency.crow_indices().to(torch.int32),
                adjacency.col_indices().to(torch.int32),
                adjacency.values(),
                size=adjacency.shape,
            )
        return adjacency


def propagate_layer_sum(adjacency: Tensor, x: Tensor, alpha: Sequence[float]) -> Tensor:
    """``sum_l alpha[l] * A^l @ x`` (``l = 0..len(alpha)-1``) by Horner's rule, without autograd.

    ``a_0 x + A (a_1 x + A (a_2 x + A (a_3 x)))``: one fused ``addmm`` (``beta * x + A @ y``) per
    layer and one scaling, instead of a product, a scaling and an addition per layer. Equal to the
    layer-by-layer sum up to float rounding (checked in the tests to 1e-6).
    """
    out = x * alpha[-1]
    for coefficient in reversed(alpha[:-1]):
        out = torch.addmm(x, adjacency, out, beta=coefficient)
    return out


class _LightGCNPropagation(torch.autograd.Function):
    """``P(A) x = sum_l alpha_l A^l x`` for a symmetric sparse ``A``, with the gradient ``P(A) g``.

    ``P(A)`` is symmetric when ``A`` is (the normalised adjacency of an undirected graph), so the
    backward pass is the forward polynomial applied to the incoming gradient: no transposed
    sparse matrix and no autograd graph over the per-layer intermediates.
    """

    @staticmethod
    def forward(ctx, adjacency: Tensor, x: Tensor, alpha: tuple[float, ...]) -> Tensor:  # type: ignore[override]
        ctx.adjacency, ctx.alpha = adjacency, alpha
        return propagate_layer_sum(adjacency, x, alpha)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, propagate_layer_sum(ctx.adjacency, grad.contiguous(), ctx.alpha), None


class SparseLightGCN(LightGCN):
    """torch_geometric's ``LightGCN`` with propagation by a precomputed normalised adjacency.

    Same parameters, layer weights ``alpha`` and ``recommendation_loss`` as the parent; when
    ``get_embedding`` receives the symmetric CSR matrix of :func:`normalized_adjacency` it computes
    ``sum_l alpha_l A^l x`` with :class:`_LightGCNPropagation` (identical to ``LGConv`` layers on
    the corresponding ``edge_index`` up to float rounding, checked in the tests); any other graph
    argument is handed to the parent's ``LGConv`` layers unchanged.
    """

    def get_embedding(self, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        if not (isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_csr and edge_weight is None):
            return super().get_embedding(edge_index, edge_weight)
        return _LightGCNPropagation.apply(edge_index, self.embedding.weight, self.layer_weights)

    @property
    def layer_weights(self) -> tuple[float, ...]:
        """``alpha`` as Python floats, read from the buffer once (no device-to-host copy per step)."""
        cached = getattr(self, "_layer_weights", None)
        if cached is None or len(cached) != self.num_layers + 1:
            cached = tuple(float(a) for a in self.alpha.detach().cpu())
            self._layer_weights = cached
        return cached

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._layer_weights = None  # a loaded ``alpha`` replaces the cached floats
        super()._load_from_state_dict(*args, **kwargs)

    def fold_in_basis(self, adjacency: Tensor) -> Tensor:
        """``b = sum_{l=0}^{L-1} alpha_{l+1} x^(l)`` per node (``x^(l)``: layer-l embeddings).

        A node ``v`` attached to the frozen graph with neighbours ``N(v)`` gets the final LightGCN
        embedding ``alpha_0 x_v^(0) + sum_{n in N(v)} b_n / sqrt(|N(v)| |N(n)|)``: the sum is all
        that can be computed for a node that has no trained ``x_v^(0)`` (see fold-in below).
        """
        x = self.embedding.weight
        basis = torch.zeros_like(x)
        for layer in range(self.num_layers):
            basis = basis + x * self.alpha[layer + 1]
            x = adjacency @ x
        return basis


# ----------------------------------------------------------------------------------------------
# Popularity
# ----------------------------------------------------------------------------------------------


def item_popularity(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """Exact number of TRAIN interactions per item (valid / test / unseen rows must not be passed)."""
    return np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items).astype(np.int64)


def popularity_score_fn(counts: np.ndarray | Tensor, device: str | torch.device | None = None) -> ScoreFn:
    """Score function giving every user the item counts as scores (ties are resolved by the evaluator)."""
    target = resolve_device(device) if device is not None else None
    if isinstance(counts, Tensor):
        scores = counts.to(dtype=torch.float32, device=target)
    else:
        scores = torch.tensor(np.asarray(counts), dtype=torch.float32, device=target)

    def score_fn(user_ids: Tensor) -> Tensor:
        # expand() is a view: no (batch, n_items) copy; the evaluator never writes into it.
        return scores.unsqueeze(0).expand(len(user_ids), -1)

    return score_fn


# ----------------------------------------------------------------------------------------------
# Negative sampling
# ----------------------------------------------------------------------------------------------


def positive_keys(train_users: np.ndarray | Tensor, train_items: np.ndarray | Tensor, n_items: int) -> Tensor:
    """Sorted unique ``user * n_items + item`` keys of the training positives (for membership tests)."""
    # torch.tensor copies: pandas 3 hands out read-only arrays, which torch.as_tensor warns about.
    u = torch.tensor(np.asarray(train_users, dtype=np.int64))
    i = torch.tensor(np.asarray(train_items, dtype=np.int64))
    return torch.unique(u * n_items + i)  # unique() returns sorted values


def sample_negatives(
    users: Tensor,
    pos_keys: Tensor,
    n_items: int,
    generator: torch.Generator,
    max_rounds: int = 1000,
) -> Tensor:
    """One uniform negative item per entry of ``users``, never a training positive of that user.

    Vectorised rejection sampling: draw all, then redraw only the rejected entries until none is
    left (expected rounds ~ 1 / (1 - max density), tiny for recommendation data).
    """
    users = users.to(torch.int64).cpu()
    negatives = torch.randint(0, n_items, (len(users),), generator=generator)
    todo = torch.arange(len(users))
    for _ in range(max_rounds):
        keys = users[todo] * n_items + negatives[todo]
        pos = torch.searchsorted(pos_keys, keys).clamp_(max=max(len(pos_keys) - 1, 0))
        rejected = pos_keys[pos] == keys if len(pos_keys) else torch.zeros(len(todo), dtype=torch.bool)
        todo = todo[rejected]
        if len(todo) == 0:
            return negatives
        negatives[todo] = torch.randint(0, n_items, (len(todo),), generator=generator)
    raise RuntimeError(
        f"negative sampling did not finish after {max_rounds} rounds: some user has (almost) every item as a "
        "training positive, so no negative exists. Drop such users in preprocessing."
    )


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class MatrixFactorization(nn.Module):
    """BPR-MF: one embedding per node (users first, then items), scored by dot product.

    Mirrors the parts of ``LightGCN``'s interface the trainer uses (``embedding``,
    ``get_embedding``, ``recommendation_loss``) so both models share one training loop; no graph
    propagation, which makes it the "w/o high-order knowledge" ablation.
    """

    def __init__(self, num_nodes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.embedding_dim = embedding_dim
        self.embedding = nn.Embedding(num_nodes, embedding_dim)
        # Same initialisation as torch_geometric's LightGCN, so the ablation only removes propagation.
        nn.init.xavier_uniform_(self.embedding.weight)

    def get_embedding(self, edge_index: Tensor | None = None, edge_weight: Tensor | None = None) -> Tensor:
        """The embedding table (the graph arguments are accepted and ignored)."""
        return self.embedding.weight

    def fold_in_basis(self, adjacency: Tensor | None = None) -> Tensor:
        """MF has no propagation: new nodes aggregate the trained embeddings themselves."""
        return self.embedding.weight

    def recommendation_loss(
        self, pos_edge_rank: Tensor, neg_edge_rank: Tensor, node_id: Tensor | None = None, lambda_reg: float = 1e-4
    ) -> Tensor:
        """The same BPR + L2 loss as ``LightGCN.recommendation_loss``."""
        emb = self.embedding.weight if node_id is None else self.embedding.weight[node_id]
        return BPRLoss(lambda_reg)(pos_edge_rank, neg_edge_rank, emb)


ModelName = Literal["lightgcn", "mf"]
FoldInMethod = Literal["symmetric", "mean"]


@dataclass
class CFConfig:
    """Hyper-parameters of CF training (defaults: d = 64, 3 layers, Adam 1e-3, as in the paper)."""

    model: ModelName = "lightgcn"
    embedding_dim: int = 64
    num_layers: int = 3
    epochs: int = 300
    batch_size: int = 2048
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    """Optimiser weight decay (decoupled for AdamW); the BPR L2 term is ``lambda_reg``."""
    lambda_reg: float = 1e-4
    """L2 on the batch's layer-0 embeddings inside ``recommendation_loss`` (per sample, as LightGCN)."""
    eval_every: int = 1
    patience: int = 10
    """Number of validations without improvement of valid NDCG@20 before stopping."""
    eval_ks: tuple[int, ...] = DEFAULT_KS
    eval_batch_size: int = 1024
    seed: int = 0
    device: str | None = None
    """``None``/``"auto"``: CUDA when available."""
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in ("lightgcn", "mf"):
            raise ValueError(f"cf model must be 'lightgcn' or 'mf', got {self.model!r}.")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"cf optimizer must be 'adam' or 'adamw', got {self.optimizer!r}.")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise ValueError("cf epochs, batch_size, eval_every and patience must be >= 1.")
        if 20 not in self.eval_ks:
            raise ValueError(f"eval_ks must contain 20 (early stopping uses {SELECTION_METRIC}), got {self.eval_ks}.")
        self.eval_ks = tuple(int(k) for k in self.eval_ks)


@dataclass
class CFResult:
    """Trained collaborative embeddings and their training record.

    ``user_embeddings`` (n_seen_users, d) and ``item_embeddings`` (n_items, d) are the best
    epoch's final (for LightGCN: propagated, ``get_embedding``) vectors, on CPU. ``state_dict``
    holds the best epoch's raw parameters. ``history`` has one row per epoch: ``epoch``,
    ``loss`` and ``valid_<metric>`` (NaN on epochs without validation). ``*_fold_in_basis`` are
    what :func:`fold_in_user_embeddings` / :func:`fold_in_item_embeddings` aggregate for new
    users / items, ``*_fold_in_scales[method]`` the least-squares factor that maps the fold-in of
    the TRAIN nodes onto their trained embeddings (:meth:`fold_in_users`, :meth:`fold_in_items`).
    """

    model_name: str
    user_embeddings: Tensor
    item_embeddings: Tensor
    best_epoch: int
    history: pd.DataFrame
    best_valid_metrics: dict[str, float]
    state_dict: dict[str, Tensor]
    user_degree: np.ndarray
    item_degree: np.ndarray
    user_fold_in_basis: Tensor
    item_fold_in_basis: Tensor
    user_fold_in_scales: dict[str, float]
    item_fold_in_scales: dict[str, float]
    config: CFConfig
    epochs_run: int
    fit_seconds: float
    params: dict[str, object] = field(default_factory=dict)

    @property
    def n_seen_users(self) -> int:
        return self.user_embeddings.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_embeddings.shape[0]

    def fold_in_users(self, histories: Histories, method: FoldInMethod = "symmetric", calibrated: bool = True) -> Tensor:
        """Vectors for users outside training from their item histories (rows follow ``histories``).

        :func:`fold_in_user_embeddings` on ``item_fold_in_basis``, times
        ``user_fold_in_scales[method]`` when ``calibrated``. That positive scale leaves every
        ranking unchanged; it stands in, on average, for the missing ego term, so new users'
        vectors have the magnitude of the trained ones the tokenizer is fitted on.
        """
        vectors = fold_in_user_embeddings(self.item_fold_in_basis, histories, self.item_degree, method)
        return vectors * self.user_fold_in_scales[method] if calibrated else vectors

    def fold_in_items(self, item_users: Histories, method: FoldInMethod = "symmetric", calibrated: bool = True) -> Tensor:
        """Vectors for new items from the seen users who interacted with them (see :meth:`fold_in_users`)."""
        vectors = fold_in_item_embeddings(self.user_fold_in_basis, item_users, self.user_degree, method)
        return vectors * self.item_fold_in_scales[method] if calibrated else vectors


def build_cf_model(config: CFConfig, n_nodes: int) -> nn.Module:
    """:class:`SparseLightGCN` or :class:`MatrixFactorization` with a seeded initialisation."""
    # fork_rng: seed the initialisation without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.model == "lightgcn":
            return SparseLightGCN(n_nodes, config.embedding_dim, config.num_layers)
        return MatrixFactorization(n_nodes, config.embedding_dim)


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
    item; :func:`~tokenrec_pipeline.models.evaluation.eval_inputs_from_splits`). Without it the
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

    history: list[dict[str, float]] = []
    best_score, best_epoch, bad_evals = -np.inf, -1, 0
    best_emb: Tensor | None = None
    best_state: dict[str, Tensor] | None = None
    best_metrics: dict[str, float] = {}
    epochs = tqdm(range(config.epochs), desc=f"{config.model} training", disable=not config.show_progress, leave=False)
    epoch = -1
    for epoch in epochs:
        model.train()
        # Shuffle and sample on the host (seeded CPU generator: same draws on every device), then
        # move the epoch's node ids to the device once; batches are slices, no per-batch copies.
        perm = torch.randperm(n_pairs, generator=generator)
        negatives = sample_negatives(users_t[perm], pos_keys, n_items, generator)
        batch_users = users_t[perm].to(device)
        batch_pos = (items_t[perm] + n_seen).to(device)
        batch_neg = (negatives + n_seen).to(device)
        epoch_loss = torch.zeros((), device=device)  # summed on device: no host sync per batch
        for s in range(0, n_pairs, config.batch_size):
            e = min(s + config.batch_size, n_pairs)
            loss = bpr_step(model, adjacency, optimizer, batch_users[s:e], batch_pos[s:e], batch_neg[s:e],
                            config.lambda_reg)
            epoch_loss += loss * (e - s)
        record: dict[str, float] = {"epoch": epoch, "loss": float(epoch_loss) / n_pairs}

        if validator is not None and ((epoch + 1) % config.eval_every == 0 or epoch == config.epochs - 1):
            model.eval()
            with torch.no_grad():
                emb = model.get_embedding(adjacency)
            res = validator(emb)
            record.update({f"valid_{k}": v for k, v in res.metrics.items()})
            score = res.metrics[SELECTION_METRIC]
            if score > best_score:
                best_score, best_epoch, bad_evals = score, epoch, 0
                best_emb = emb.detach().cpu().clone()
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best_metrics = dict(res.metrics)
            else:
                bad_evals += 1
            epochs.set_postfix(loss=f"{record['loss']:.4f}", ndcg20=f"{score:.4f}", best=best_epoch)
            logger.debug("%s epoch %d: loss %.4f, valid %s %.4f", config.model, epoch, record["loss"], SELECTION_METRIC, score)
        history.append(record)
        if bad_evals >= config.patience:
            break

    epochs_run = epoch + 1
    if best_emb is None:  # no validation: keep the last epoch
        model.eval()
        with torch.no_grad():
            best_emb = model.get_embedding(adjacency).detach().cpu().clone()
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best_epoch = epochs_run - 1

    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        basis = model.fold_in_basis(adjacency).detach().cpu().clone()
    user_scales, item_scales = _fold_in_scales(train, best_emb, basis)
    fit_seconds = time.perf_counter() - start
    frame = pd.DataFrame(history)
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


def _csr_by(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of ``cols`` grouped by ``rows`` (rows 0..n_rows-1)."""
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, np.asarray(cols, dtype=np.int64)[order]


def _least_squares_scale(target: Tensor, approx: Tensor) -> float:
    """``argmin_c ||target - c * approx||^2`` (1.0 when ``approx`` is all zeros)."""
    denom = float(approx.square().sum())
    return float((target * approx).sum()) / denom if denom > 0 else 1.0


def _fold_in_scales(
    train: TrainInteractions, embeddings: Tensor, basis: Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """Per fold-in method, the scale mapping the fold-in of every train user / item (from its
    train edges) onto its trained vector."""
    n_seen = train.n_seen_users
    user_items = _csr_by(train.users, train.items, n_seen)
    item_users = _csr_by(train.items, train.users, train.n_items)
    user_scales, item_scales = {}, {}
    for method in ("symmetric", "mean"):
        users_folded = fold_in_user_embeddings(basis[n_seen:], user_items, train.item_degree, method)
        items_folded = fold_in_item_embeddings(basis[:n_seen], item_users, train.user_degree, method)
        user_scales[method] = _least_squares_scale(embeddings[:n_seen], users_folded)
        item_scales[method] = _least_squares_scale(embeddings[n_seen:], items_folded)
    return user_scales, item_scales


def train_lightgcn(train: TrainInteractions, config: CFConfig | None = None, valid: EvalInputs | None = None) -> CFResult:
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


# ----------------------------------------------------------------------------------------------
# Fold-in (new users / new items without retraining)
# ----------------------------------------------------------------------------------------------

def _aggregate(
    neighbour_embeddings: Tensor,
    neighbours: Histories,
    n_rows: int,
    neighbour_degree: np.ndarray | Tensor | None,
    method: FoldInMethod,
) -> Tensor:
    indptr, indices = histories_to_csr(neighbours, n_rows)
    lengths = np.diff(indptr)
    n_neigh = neighbour_embeddings.shape[0]
    if len(indices) and (indices.min() < 0 or indices.max() >= n_neigh):
        raise ValueError(f"fold-in neighbour ids must lie in [0, {n_neigh}); check the id mapping.")
    device = neighbour_embeddings.device
    rows = torch.as_tensor(np.repeat(np.arange(n_rows), lengths), device=device)
    cols = torch.tensor(indices, device=device)
    own_degree = torch.as_tensor(lengths, dtype=torch.float32, device=device).clamp(min=1.0)
    if method == "mean":
        weights = 1.0 / own_degree[rows]
    elif method == "symmetric":
        if neighbour_degree is None:
            raise ValueError("method='symmetric' needs the neighbours' train degrees (CFResult.item_degree / user_degree).")
        if isinstance(neighbour_degree, Tensor):
            deg = neighbour_degree.to(dtype=torch.float32, device=device)
        else:
            deg = torch.tensor(np.asarray(neighbour_degree), dtype=torch.float32, device=device)
        if deg.shape[0] != n_neigh:
            raise ValueError(f"neighbour_degree has {deg.shape[0]} entries for {n_neigh} embeddings.")
        # A neighbour with no train edge (degree 0) counts as degree 1 rather than dividing by zero.
        weights = torch.rsqrt(own_degree[rows] * deg.clamp(min=1.0)[cols])
    else:
        raise ValueError(f"fold-in method must be 'symmetric' or 'mean', got {method!r}.")
    out = torch.zeros((n_rows, neighbour_embeddings.shape[1]), dtype=neighbour_embeddings.dtype, device=device)
    out.index_add_(0, rows, neighbour_embeddings[cols] * weights.unsqueeze(1).to(neighbour_embeddings.dtype))
    return out


def fold_in_user_embeddings(
    item_basis: Tensor,
    histories: Histories,
    item_degree: np.ndarray | Tensor | None = None,
    method: FoldInMethod = "symmetric",
) -> Tensor:
    """Embeddings of users who were not in training, from their item histories (no retraining).

    ``symmetric`` (default)::

        e_u = sum_{i in N(u)} b_i / sqrt(|N(u)| * |N(i)|)

    with ``|N(u)|`` the history length, ``|N(i)|`` the item's TRAIN degree (0 counted as 1) and
    ``b_i`` the item's fold-in basis, ``CFResult.item_fold_in_basis``. For LightGCN that basis is
    ``b_i = sum_{l=0}^{L-1} alpha_{l+1} e_i^(l)`` (layer-l embeddings of the trained model), which
    makes ``e_u`` exactly LightGCN's final embedding of a user node attached to the frozen train
    graph, minus the ego term ``alpha_0 e_u^(0)`` that has no trained value for a new user
    (for a seen user, ``trained e_u - alpha_0 e_u^(0)`` equals this fold-in of their train items;
    the tests check it). For MF the basis is the item embedding table. Passing the final item
    embeddings as basis gives one extra propagation step on them instead. ``mean``:
    ``e_u = mean_{i in N(u)} b_i``.

    Row ``r`` of the result belongs to history row ``r``; an empty history gives a zero vector.
    Pure: reads the embeddings, never writes them, no gradient.
    """
    n_rows = len(histories[0]) - 1 if isinstance(histories, tuple) else len(histories)
    with torch.no_grad():
        return _aggregate(item_basis.detach(), histories, n_rows, item_degree, method)


def fold_in_item_embeddings(
    user_basis: Tensor,
    item_users: Histories,
    user_degree: np.ndarray | Tensor | None = None,
    method: FoldInMethod = "symmetric",
) -> Tensor:
    """Embeddings of new items from the seen users who interacted with them; the mirror of
    :func:`fold_in_user_embeddings`: ``e_i = sum_{u in N(i)} b_u / sqrt(|N(i)| * |N(u)|)`` with
    ``b_u`` from ``CFResult.user_fold_in_basis`` and ``|N(u)|`` the user's TRAIN degree
    (``method="mean"``: the mean of the ``b_u``). Rows follow ``item_users``."""
    n_rows = len(item_users[0]) - 1 if isinstance(item_users, tuple) else len(item_users)
    with torch.no_grad():
        return _aggregate(user_basis.detach(), item_users, n_rows, user_degree, method)


# ----------------------------------------------------------------------------------------------
# Protocol evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_cf(
    result: CFResult,
    interactions_split: pd.DataFrame,
    *,
    split: Literal["valid", "test"] = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    fold_in_method: FoldInMethod = "symmetric",
    model: str | None = None,
) -> tuple[pd.DataFrame, dict[str, RankingResult]]:
    """Protocol metrics of trained CF embeddings for seen and unseen users (long table + results).

    * seen users: the best epoch's user vectors (selected on valid only); ``test``: history =
      train + valid items, target = test item; ``valid``: history = train, target = valid.
    * unseen users (``test`` only): vectors folded in from ``unseen_history``
      (:meth:`CFResult.fold_in_users` with ``fold_in_method``); history = unseen_history,
      target = unseen_test.
    """
    groups: dict[str, GroupSpec] = {}
    seen = eval_inputs_from_splits(interactions_split, "seen", split)
    seen_vectors = result.user_embeddings[torch.as_tensor(seen.users)]
    groups["seen"] = GroupSpec(seen, user_vectors=seen_vectors, item_vectors=result.item_embeddings)
    if split == "test":
        unseen = eval_inputs_from_splits(interactions_split, "unseen", "test")
        unseen_vectors = result.fold_in_users(unseen.histories, fold_in_method)
        groups["unseen"] = GroupSpec(unseen, user_vectors=unseen_vectors, item_vectors=result.item_embeddings)
    return evaluate_user_groups(groups, model=model or result.model_name, split=split, ks=ks, batch_size=batch_size)


def evaluate_pop(
    interactions_split: pd.DataFrame,
    *,
    split: Literal["valid", "test"] = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
) -> tuple[pd.DataFrame, dict[str, RankingResult]]:
    """Pop baseline under the protocol: scores = TRAIN counts, seen (and, for test, unseen) users."""
    train = train_interactions_from_splits(interactions_split)
    score_fn = popularity_score_fn(train.item_degree)
    groups = {"seen": GroupSpec(eval_inputs_from_splits(interactions_split, "seen", split), score_fn=score_fn)}
    if split == "test":
        groups["unseen"] = GroupSpec(eval_inputs_from_splits(interactions_split, "unseen", "test"), score_fn=score_fn)
    return evaluate_user_groups(groups, model="pop", split=split, ks=ks, batch_size=batch_size)
