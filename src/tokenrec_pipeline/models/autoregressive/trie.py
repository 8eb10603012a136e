"""The item code table as a prefix trie (:class:`CodeTrie`): constrained decoding masks and tuple lookups.

Shapes: ``N`` queries, ``I`` items, ``K`` codebooks (tokens per item), ``L`` codes per codebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


class CodeTrie:
    """Prefix trie of the item code table, stored level by level as sorted arrays (no Python dicts).

    Nodes at depth ``k`` (``k`` codes chosen) are numbered ``0..n_k-1``; the root is node 0 at depth 0.
    Level ``k`` (0-based codebook) holds the children of the depth-``k`` nodes as the sorted keys
    ``parent * L + code``; a child's node id at depth ``k+1`` is its position in that sorted array, so the
    children of one parent are contiguous (CSR, ``indptr``). Depth-K nodes are the distinct item tuples
    ("leaves"); ``leaf_items`` lists each tuple's items in ascending id (the documented collision order).

    Args:
        codes: (I, K) integer codes, ``codes[i, k]`` in ``[0, L)``.
        codebook_size: L.

    Attributes:
        n_items, n_codebooks, codebook_size: I, K, L.
        keys: K tensors, level k of shape (n_{k+1},), int64, sorted.
        indptr: K tensors, level k of shape (n_k + 1,): children of depth-k node p are
            ``keys[k][indptr[k][p]:indptr[k][p + 1]]``.
        item_leaf: (I,) leaf (tuple) id of every item.
        leaf_indptr, leaf_items: CSR of the items of each leaf, ascending item id.
    """

    def __init__(self, codes: np.ndarray | Tensor, codebook_size: int) -> None:
        table = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
        if table.ndim != 2 or table.shape[1] < 1:
            raise ValueError(f"The item code table must be (n_items, K), got shape {table.shape}.")
        table = table.astype(np.int64, copy=False)
        if table.size and (table.min() < 0 or table.max() >= codebook_size):
            raise ValueError(
                f"Item codes must lie in [0, {codebook_size}); got range [{table.min()}, {table.max()}]. Check that "
                "codebook_size matches the tokenizer's codebook size."
            )
        self.n_items, self.n_codebooks = int(table.shape[0]), int(table.shape[1])
        self.codebook_size = int(codebook_size)
        self.device = torch.device("cpu")
        keys: list[Tensor] = []
        indptr: list[Tensor] = []
        parents = np.zeros(self.n_items, dtype=np.int64)  # every item starts at the root
        n_parents = 1
        for k in range(self.n_codebooks):
            item_keys = parents * self.codebook_size + table[:, k]
            unique_keys, child_of_item = np.unique(item_keys, return_inverse=True)
            # unique_keys is sorted by (parent, code): children of a parent are contiguous.
            level_indptr = np.searchsorted(unique_keys // self.codebook_size, np.arange(n_parents + 1), side="left")
            keys.append(torch.from_numpy(unique_keys.astype(np.int64)))
            indptr.append(torch.from_numpy(level_indptr.astype(np.int64)))
            parents = child_of_item.reshape(-1).astype(np.int64)
            n_parents = int(unique_keys.shape[0])
        self.keys, self.indptr = keys, indptr
        self.item_leaf = torch.from_numpy(parents)
        order = np.argsort(parents, kind="stable")  # stable: ascending item id inside a leaf
        counts = np.bincount(parents, minlength=n_parents)
        leaf_indptr = np.zeros(n_parents + 1, dtype=np.int64)
        np.cumsum(counts, out=leaf_indptr[1:])
        self.leaf_indptr = torch.from_numpy(leaf_indptr)
        self.leaf_items = torch.from_numpy(order.astype(np.int64))

    # -- facts -------------------------------------------------------------------------------------------------

    @property
    def n_tuples(self) -> int:
        """T, the number of distinct item tuples (leaves)."""
        return int(self.leaf_indptr.shape[0] - 1)

    @property
    def collision_rate(self) -> float:
        """Share of items whose tuple is shared with another item (the tokenizer diagnostics' definition)."""
        sizes = self.leaf_indptr[1:] - self.leaf_indptr[:-1]
        return float(sizes[sizes > 1].sum()) / max(self.n_items, 1)

    @property
    def tuple_space(self) -> int:
        """L^K, the number of well-formed K-tuples an unconstrained decoder can emit (Python int, may be huge)."""
        return self.codebook_size**self.n_codebooks

    def to(self, device: str | torch.device) -> CodeTrie:
        """Move the lookup tensors to ``device`` (in place; returns ``self``)."""
        device = torch.device(device)
        self.keys = [t.to(device) for t in self.keys]
        self.indptr = [t.to(device) for t in self.indptr]
        self.item_leaf = self.item_leaf.to(device)
        self.leaf_indptr = self.leaf_indptr.to(device)
        self.leaf_items = self.leaf_items.to(device)
        self.device = device
        return self

    # -- lookups -----------------------------------------------------------------------------------------------

    def children(self, level: int, parents: Tensor) -> Tensor:
        """Child node ids of depth-``level`` nodes for every next code.

        Args:
            level: Codebook index k (0-based); ``parents`` are depth-k node ids.
            parents: (N,) long node ids; -1 marks a prefix that already left the trie.

        Returns:
            (N, L) long: the depth-(k+1) node reached by appending each code, -1 where that prefix is no
            item's (so ``children(...) >= 0`` is the constrained-decoding mask).
        """
        n = parents.shape[0]
        out = torch.full((n, self.codebook_size), -1, dtype=torch.long, device=parents.device)
        valid = parents >= 0
        safe = parents.clamp(min=0)
        starts = self.indptr[level][safe]
        counts = torch.where(valid, self.indptr[level][safe + 1] - starts, torch.zeros_like(starts))
        total = int(counts.sum())
        if total == 0:
            return out
        # Expand each parent into its children's positions without a Python loop.
        rows = torch.repeat_interleave(torch.arange(n, device=parents.device), counts)
        offsets = torch.cumsum(counts, 0) - counts
        positions = starts[rows] + torch.arange(total, device=parents.device) - offsets[rows]
        codes = self.keys[level][positions] % self.codebook_size
        out[rows, codes] = positions
        return out

    def lookup(self, tuples: Tensor | np.ndarray) -> Tensor:
        """Leaf (tuple) id of each K-tuple, -1 when it is no item's tuple (an invalid generation).

        Args:
            tuples: (N, K) codes (any integers; out-of-range codes count as invalid).

        Returns:
            (N,) long leaf ids.
        """
        codes = torch.as_tensor(tuples, dtype=torch.long, device=self.device)
        if codes.ndim != 2 or codes.shape[1] != self.n_codebooks:
            raise ValueError(f"tuples must be (N, {self.n_codebooks}), got {tuple(codes.shape)}.")
        nodes = torch.zeros(codes.shape[0], dtype=torch.long, device=self.device)
        for level in range(self.n_codebooks):
            code = codes[:, level]
            in_range = (code >= 0) & (code < self.codebook_size) & (nodes >= 0)
            nodes = self._child(level, nodes, code.clamp(0, self.codebook_size - 1), in_range)
        return nodes

    def _child(self, level: int, parents: Tensor, codes: Tensor, valid: Tensor | None = None) -> Tensor:
        """Child id of (parent, code) pairs, -1 where absent or where ``valid`` is False. All (N,)."""
        keys = self.keys[level]
        wanted = parents.clamp(min=0) * self.codebook_size + codes
        position = torch.searchsorted(keys, wanted).clamp(max=keys.shape[0] - 1)
        found = (keys[position] == wanted) & (parents >= 0)
        if valid is not None:
            found &= valid
        return torch.where(found, position, torch.full_like(position, -1))

    def items_of(self, leaf: int) -> list[int]:
        """Items of one tuple, ascending id (empty for -1)."""
        if leaf < 0:
            return []
        return self.leaf_items[self.leaf_indptr[leaf] : self.leaf_indptr[leaf + 1]].tolist()

    def codes_of_items(self, items: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """(N,) item ids -> (N, K) codes, read back from the trie (what the training targets are)."""
        leaves = self.item_leaf[torch.as_tensor(items, dtype=torch.long, device=self.device)]
        out = torch.empty(leaves.shape[0], self.n_codebooks, dtype=torch.long, device=self.device)
        nodes = leaves
        for level in range(self.n_codebooks - 1, -1, -1):
            key = self.keys[level][nodes]
            out[:, level] = key % self.codebook_size
            nodes = key // self.codebook_size
        return out
