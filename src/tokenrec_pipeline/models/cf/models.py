"""The train graph, LightGCN (torch_geometric's, propagated by a precomputed normalised adjacency),
BPR-MF, and their seeded construction."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN
from torch_geometric.nn.models.lightgcn import BPRLoss
from torch_geometric.utils import to_torch_csr_tensor

from tokenrec_pipeline.models.cf.config import CFConfig


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
        that can be computed for a node that has no trained ``x_v^(0)``
        (see :mod:`tokenrec_pipeline.models.cf.fold_in`).
        """
        x = self.embedding.weight
        basis = torch.zeros_like(x)
        for layer in range(self.num_layers):
            basis = basis + x * self.alpha[layer + 1]
            x = adjacency @ x
        return basis


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


def build_cf_model(config: CFConfig, n_nodes: int) -> nn.Module:
    """:class:`SparseLightGCN` or :class:`MatrixFactorization` with a seeded initialisation."""
    # fork_rng: seed the initialisation without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.model == "lightgcn":
            return SparseLightGCN(n_nodes, config.embedding_dim, config.num_layers)
        return MatrixFactorization(n_nodes, config.embedding_dim)
