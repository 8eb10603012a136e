"""Autoregressive (P5-style) baseline: generate the target item's K code tokens with beam search.

TokenRec retrieves items in one forward pass (prompt -> z -> faiss). The paper compares it with LLM
recommenders that instead *generate* an item identifier token by token and decode with beam search
(P5, POD, CID; paper Table V). This module is that comparison, built on the same pieces as
:mod:`tokenrec_pipeline.models.llm4rec`: the same backbone, the same prompts with the same ID tokens,
and the same item code table (each item = K codes ``<i1-a><i2-b><i3-c>``, one per codebook of size L).

Architecture (``AutoregressiveConfig.decoder``):

* ``"backbone"`` -- encoder-decoder checkpoints (T5, P5's own backbone; ``AutoModelForSeq2SeqLM``): the
  model's own decoder generates the item tokens that were added to its vocabulary (tied with the input
  embeddings, as in P5). At step k the LM-head logits are read only at the L tokens of codebook k: the
  *format* ``<i1-.><i2-.><i3-.>`` is enforced by construction (P5 may also emit free text; this is a
  little kinder to the baseline), item *validity* is not.
* ``"head"`` -- every other backbone (the project's default all-MiniLM-L6-v2 is encoder-only; decoder-only
  models such as GPT-2 work the same way): a small Transformer decoder (``nn.TransformerDecoder``, pre-LN,
  default 2 layers of the backbone's width) cross-attends to the backbone's per-token hidden states and
  predicts codebook k's L codes at step k. Its input vocabulary is the K*L code tokens plus BOS. Why a head
  rather than turning BERT into a decoder: MiniLM has no causal LM weights to reuse, and a fresh shallow
  decoder over a frozen-width memory is what "put an autoregressive decoder on an encoder" means in
  seq2seq practice (BERT2BERT-style warm starts would also need the cross-attention trained from scratch).
  ``"auto"`` picks ``"backbone"`` for encoder-decoder checkpoints and ``"head"`` otherwise.

Decoding (:meth:`AutoregressiveRecommender.generate`): batched beam search over K steps, sequence score =
sum of per-step log-probabilities.

* ``mode="unconstrained"``: any K-tuple in ``[0, L)^K`` may come out; it is mapped to items through the
  code table (:class:`CodeTrie`), and a tuple that is no item's code is **invalid** (a hallucinated item).
  Invalid tuples are kept in the output and counted (:attr:`GenerationOutput.n_invalid`), never hidden;
  they simply recommend nothing.
* ``mode="constrained"``: logits of next codes that leave the prefix trie of real item tuples are set to
  -inf *before* the log-softmax, so each step's distribution is renormalised over valid continuations and
  the scores are log-probabilities of a distribution over real items only (they sum to 1 over all items'
  tuples). Only real items are emitted.
* ``exclude`` (both modes): per-prompt item ids never generated (tuples all of whose items are excluded are
  masked), so beam slots are not wasted on the user's history -- the same rule the evaluator applies. In
  constrained mode prefixes that can only end in excluded items are pruned as well.

Items sharing one tuple (token collisions) are all recommended, in ascending item id, with the tuple's
score (:func:`ranked_items`); in a score matrix they tie, and the evaluator resolves ties by expected rank.

Efficiency (the point of the comparison, so the baseline is not handicapped): the prompt is encoded once;
the head precomputes the cross-attention keys/values once per prompt and lets all beams of a prompt query
them in one batched attention (no copy per beam); self-attention keys/values are cached across steps and
reordered with the beams. The ``"backbone"`` path uses transformers' own encoder-decoder cache
(``reorder_cache``) and, like P5, computes the LM head over the whole vocabulary at every step (only the L
codes of the current codebook are then read); restricting the head's matrix product to those L rows would
give the same scores for less work and is not done. Beam bookkeeping runs on the model's device.

Shapes: ``N`` prompts, ``B`` prompts in a batch, ``W`` beams per prompt, ``S`` prompt length in tokens,
``H`` backbone hidden size, ``D`` head width, ``K`` codebooks (tokens per item), ``L`` codes per codebook,
``I`` items, ``T`` distinct item tuples (``T <= I``; fewer when tokens collide).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

from tokenrec_pipeline.models.evaluation import DEFAULT_KS, RankingResult, evaluate_ranking, histories_to_csr
from tokenrec_pipeline.models.llm4rec import (
    DEFAULT_BACKBONE,
    BackboneAdapter,
    LoopConfig,
    TrainResult,
    _dataclass_from_dict,
    _forward_parameters,
    _torch_dtype,
    add_recommendation_tokens,
    detect_backbone_kind,
    limit_torch_threads,
    prepare_training,
    read_saved_config,
    resolve_backbone_path,
    resolve_device,
    run_training_loop,
    staged_folder,
)
from tokenrec_pipeline.models.precision import autocast, check_precision, int8_copy, resolve_precision
from tokenrec_pipeline.models.tokenizers.tokens import ITEM_TOKEN_PREFIX, token_vocabulary

logger = logging.getLogger(__name__)

DecoderKind = Literal["head", "backbone"]
DecodeMode = Literal["constrained", "unconstrained"]
DECODE_MODES: tuple[str, ...] = ("constrained", "unconstrained")

CONFIG_FILE = "autoregressive_config.json"
HEAD_FILE = "decoder_head.safetensors"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------------------
# The item code table as a prefix trie
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AutoregressiveConfig:
    """Architecture parameters of :class:`AutoregressiveRecommender` (saved as JSON next to the weights).

    Attributes:
        backbone: Hub id, local folder or MiniLM alias (default: the packaged all-MiniLM-L6-v2).
        tokenizer: Tokenizer location when it differs from ``backbone``.
        kind: "auto" (from the config), "encoder", "encoder_decoder" or "decoder".
        decoder: "auto", "head" (small Transformer decoder on the backbone's hidden states) or "backbone"
            (the encoder-decoder model's own decoder; encoder-decoder checkpoints only).
        n_codebooks: K, tokens per item.
        codebook_size: L, codes per codebook.
        item_token_prefix: Prefix of the item tokens (``<i1-42>``), as in the tokenization stage.
        max_length: Prompt truncation length in tokens.
        truncation_side: "right" or "left".
        head_layers: Decoder layers of the head.
        head_dim: Head width D (0: the backbone's hidden size H).
        head_heads: Attention heads of the head (0: about D / 64, a divisor of D).
        head_ff_dim: Feed-forward width of the head (0: 4 * D).
        head_dropout: Dropout inside the head.
        token_init_scale: See :func:`~tokenrec_pipeline.models.llm4rec.add_recommendation_tokens`.
        dtype: Backbone weight dtype ("float32", "bfloat16", "float16", "auto"); the head stays float32.
        seed: Seeds token initialisation and the head.
        inference_precision: "auto" | "fp32" | "bf16" | "fp16" | "int8" of :meth:`AutoregressiveRecommender.generate`
            (resolved where the model runs; see :mod:`tokenrec_pipeline.models.precision`).
    """

    backbone: str = DEFAULT_BACKBONE
    tokenizer: str | None = None
    kind: str = "auto"
    decoder: str = "auto"
    n_codebooks: int = 3
    codebook_size: int = 256
    item_token_prefix: str = ITEM_TOKEN_PREFIX
    max_length: int = 128
    truncation_side: str = "right"
    head_layers: int = 2
    head_dim: int = 0
    head_heads: int = 0
    head_ff_dim: int = 0
    head_dropout: float = 0.1
    token_init_scale: float = 0.5
    dtype: str = "float32"
    seed: int = 0
    inference_precision: str = "fp32"

    def __post_init__(self) -> None:
        self.inference_precision = check_precision(
            self.inference_precision, inference=True, parameter="autoregressive.model.inference_precision"
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AutoregressiveConfig:
        """Build from a parameters mapping, rejecting unknown keys."""
        return _dataclass_from_dict(cls, values, "autoregressive model")

    def item_tokens(self) -> list[str]:
        """The K*L item tokens, codebook-major (``<i1-0> ... <i1-{L-1}> <i2-0> ...``)."""
        return token_vocabulary(self.n_codebooks, self.codebook_size, self.item_token_prefix)


# --------------------------------------------------------------------------------------------------------------
# The decoder head (for encoder-only and decoder-only backbones)
# --------------------------------------------------------------------------------------------------------------


class CodeDecoderHead(nn.Module):
    """A small pre-LN Transformer decoder generating one code per codebook, cross-attending to the prompt.

    Input tokens: BOS (id ``K*L``) then the codes chosen so far, code c of codebook k as id ``k*L + c``
    (the order of :func:`token_vocabulary`), plus a learned position embedding per step. Output at step k:
    logits over codebook k's L codes (one ``K*L``-row output matrix, sliced per step).

    Args:
        hidden_size: H of the backbone states it reads.
        n_codebooks, codebook_size: K, L.
        dim, heads, ff_dim, layers, dropout: Decoder width D, attention heads, feed-forward width, depth,
            dropout.
    """

    def __init__(
        self,
        hidden_size: int,
        n_codebooks: int,
        codebook_size: int,
        dim: int,
        heads: int,
        ff_dim: int,
        layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"head_dim {dim} must be divisible by head_heads {heads}.")
        self.n_codebooks, self.codebook_size, self.dim, self.heads = n_codebooks, codebook_size, dim, heads
        self.bos_id = n_codebooks * codebook_size
        self.memory_proj = nn.Linear(hidden_size, dim)
        self.token_embedding = nn.Embedding(n_codebooks * codebook_size + 1, dim)
        self.position_embedding = nn.Embedding(n_codebooks, dim)
        layer = nn.TransformerDecoderLayer(
            dim, heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        self.output = nn.Linear(dim, n_codebooks * codebook_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def input_ids(self, target_codes: Tensor) -> Tensor:
        """Teacher-forcing inputs: (B, K) codes -> (B, K) head token ids ``[BOS, c_1, ..., c_{K-1}]``."""
        offsets = torch.arange(self.n_codebooks - 1, device=target_codes.device) * self.codebook_size
        previous = target_codes[:, :-1] + offsets
        bos = torch.full_like(target_codes[:, :1], self.bos_id)
        return torch.cat([bos, previous], dim=1)

    def forward(self, memory: Tensor, memory_mask: Tensor, target_codes: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            memory: (B, S, D) projected prompt states.
            memory_mask: (B, S), 1/True for real prompt tokens.
            target_codes: (B, K) the target tuples.

        Returns:
            (B, K, L) logits; row k scores codebook k's codes given the target's first k codes.
        """
        k = self.n_codebooks
        tokens = self.input_ids(target_codes)
        x = self.token_embedding(tokens) + self.position_embedding.weight[:k]
        causal = nn.Transformer.generate_square_subsequent_mask(k, device=x.device, dtype=x.dtype)
        hidden = self.decoder(
            x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~memory_mask.bool()
        )
        logits = self.output(hidden).view(hidden.shape[0], k, k, self.codebook_size)
        steps = torch.arange(k, device=x.device)
        return logits[:, steps, steps]  # position k reads only codebook k's slice

    # -- cached incremental decoding ---------------------------------------------------------------------------

    def start(self, memory: Tensor, memory_mask: Tensor) -> dict[str, Any]:
        """Precompute each layer's cross-attention keys/values once per prompt.

        Args:
            memory: (B, S, D); memory_mask: (B, S).

        Returns:
            Decoding state: ``cross`` (per layer (B, heads, S, D/heads) keys and values), ``mask``
            ((B, 1, 1, S) bool, True = attend), empty self-attention caches, ``width`` 1.
        """
        b, s, _ = memory.shape
        cross = []
        for layer in self.decoder.layers:
            attention = layer.multihead_attn
            weight, bias = attention.in_proj_weight, attention.in_proj_bias
            kv = F.linear(memory, weight[self.dim :], None if bias is None else bias[self.dim :])
            key, value = kv.view(b, s, 2, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4)
            cross.append((key, value))
        return {"cross": cross, "mask": memory_mask.bool()[:, None, None, :], "self": [None] * len(cross), "width": 1}

    def step(self, state: dict[str, Any], level: int, previous: Tensor | None) -> Tensor:
        """One decoding step for all B*W beams (beams of a prompt are consecutive rows).

        Args:
            state: From :meth:`start`, reordered with :meth:`reorder` after each step.
            level: Step k (0-based), i.e. the codebook to predict.
            previous: (B*W,) codes chosen at step k-1 (``None`` at step 0).

        Returns:
            (B*W, L) logits for codebook k.
        """
        b = state["mask"].shape[0]
        width = state["width"]
        n = b * width
        heads, head_dim = self.heads, self.dim // self.heads
        if previous is None:
            tokens = torch.full((n,), self.bos_id, dtype=torch.long, device=state["mask"].device)
        else:
            tokens = previous + (level - 1) * self.codebook_size
        x = (self.token_embedding(tokens) + self.position_embedding.weight[level]).unsqueeze(1)  # (N, 1, D)
        for index, layer in enumerate(self.decoder.layers):
            # Self-attention over this beam's prefix; the cache makes it causal without a mask.
            h = layer.norm1(x)
            q, k, v = F.linear(h, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.view(n, 1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
            cached = state["self"][index]
            if cached is not None:
                k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
            state["self"][index] = (k, v)
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, 1, self.dim)
            x = x + layer.dropout1(layer.self_attn.out_proj(attended))
            # Cross-attention: the W beams of a prompt are W queries against that prompt's shared keys.
            h = layer.norm2(x)
            attention = layer.multihead_attn
            bias = attention.in_proj_bias
            q = F.linear(h, attention.in_proj_weight[: self.dim], None if bias is None else bias[: self.dim])
            q = q.view(b, width, heads, head_dim).transpose(1, 2)  # (B, heads, W, head_dim)
            key, value = state["cross"][index]
            attended = F.scaled_dot_product_attention(q, key, value, attn_mask=state["mask"])
            attended = attended.transpose(1, 2).reshape(n, 1, self.dim)
            x = x + layer.dropout2(attention.out_proj(attended))
            x = x + layer._ff_block(layer.norm3(x))  # the layer's own feed-forward (linear-gelu-linear)
        hidden = self.decoder.norm(x[:, 0]) if self.decoder.norm is not None else x[:, 0]
        rows = slice(level * self.codebook_size, (level + 1) * self.codebook_size)
        return F.linear(hidden, self.output.weight[rows], self.output.bias[rows])

    @staticmethod
    def reorder(state: dict[str, Any], parent_rows: Tensor, width: int) -> None:
        """Keep the self-attention caches of the surviving beams: ``parent_rows`` (B*W_new,) old row ids."""
        state["self"] = [None if c is None else (c[0][parent_rows], c[1][parent_rows]) for c in state["self"]]
        state["width"] = width


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GenerationOutput:
    """Decoded top-k tuples per prompt, in input order, best first.

    Attributes:
        codes: (N, k, K) int64 generated tuples; -1 in empty slots (fewer than k valid continuations).
        scores: (N, k) float32 sums of per-step log-probabilities; -inf in empty slots.
        leaves: (N, k) int64 tuple id in the :class:`CodeTrie`; -1 for an invalid tuple (no such item)
            and for empty slots.
        mode: "constrained" or "unconstrained"; beam_size: W.
        seconds: Wall time of the decoding call.
    """

    codes: np.ndarray
    scores: np.ndarray
    leaves: np.ndarray
    mode: str
    beam_size: int
    seconds: float = 0.0

    @property
    def generated(self) -> np.ndarray:
        """(N, k) bool: the slot holds a generated tuple (valid or not)."""
        return np.isfinite(self.scores)

    @property
    def invalid(self) -> np.ndarray:
        """(N, k) bool: a generated tuple that is no item's tuple (hallucinated)."""
        return self.generated & (self.leaves < 0)

    @property
    def n_generated(self) -> int:
        return int(self.generated.sum())

    @property
    def n_invalid(self) -> int:
        """Generated tuples that map to no item (always 0 in constrained mode)."""
        return int(self.invalid.sum())

    @property
    def invalid_rate(self) -> float:
        """n_invalid / n_generated (nan when nothing was generated)."""
        return self.n_invalid / self.n_generated if self.n_generated else float("nan")

    def summary(self) -> dict[str, float]:
        """Counts for logs / MLflow: prompts, generated, invalid, invalid rate, prompts whose top-1 is invalid."""
        top1_invalid = float(self.invalid[:, 0].sum()) if self.invalid.shape[1] else 0.0
        return {
            "prompts": float(self.codes.shape[0]),
            "generated": float(self.n_generated),
            "invalid": float(self.n_invalid),
            "invalid_rate": float(self.invalid_rate),
            "top1_invalid": top1_invalid,
            "seconds": float(self.seconds),
        }


def ranked_items(
    output: GenerationOutput,
    trie: CodeTrie,
    k: int | None = None,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn decoded tuples into item lists: valid tuples in beam order, colliding items in ascending id.

    Invalid tuples recommend nothing (they are counted in ``output``, not here); excluded items (history)
    are dropped. Items beyond the beam are not invented: short lists are padded.

    Args:
        output: From :meth:`AutoregressiveRecommender.generate`.
        trie: The code table used for decoding.
        k: List length (default: the longest list).
        exclude: Optional per-prompt item ids to drop.

    Returns:
        ``(ids, scores)``, both (N, k): item ids (int64, -1 padding) and their tuple's score (float32, -inf
        padding). Items of one tuple share its score.
    """
    n = output.codes.shape[0]
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} entries for {n} prompts.")
    leaf_indptr = trie.leaf_indptr.cpu().numpy()
    leaf_items = trie.leaf_items.cpu().numpy()
    lists: list[tuple[list[int], list[float]]] = []
    for row in range(n):
        banned = set(int(i) for i in exclude[row]) if exclude is not None else set()
        ids: list[int] = []
        scores: list[float] = []
        for leaf, score in zip(output.leaves[row].tolist(), output.scores[row].tolist(), strict=True):
            if leaf < 0:
                continue
            for item in leaf_items[leaf_indptr[leaf] : leaf_indptr[leaf + 1]].tolist():
                if item not in banned:
                    ids.append(item)
                    scores.append(score)
        lists.append((ids, scores))
    width = k if k is not None else max((len(ids) for ids, _ in lists), default=0)
    out_ids = np.full((n, width), -1, dtype=np.int64)
    out_scores = np.full((n, width), NEG_INF, dtype=np.float32)
    for row, (ids, scores) in enumerate(lists):
        m = min(width, len(ids))
        out_ids[row, :m] = ids[:m]
        out_scores[row, :m] = scores[:m]
    return out_ids, out_scores


def generation_score_matrix(
    output: GenerationOutput,
    trie: CodeTrie,
    rows: Sequence[int] | np.ndarray | None = None,
    histories: Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """Full-catalogue score matrix from decoded tuples, for the project's evaluator.

    Every item of a generated valid tuple gets the tuple's score (colliding items tie); every other item
    -- beyond the beam, or only reachable through invalid tuples -- gets -inf. With the evaluator's tie
    rule a target outside the beam therefore gets the expected rank of a uniformly random order of all
    non-generated items: no credit is invented for it beyond chance (HR@K > 0 only if K > beam items).

    Args:
        output: Decoded tuples.
        trie: The code table used for decoding.
        rows: Optional subset of output rows (default: all), e.g. one evaluation batch.
        histories: Optional per-row history items set to -inf (row-aligned with ``rows``). Leave it
            ``None`` when feeding :func:`~tokenrec_pipeline.models.evaluation.evaluate_ranking`, which
            excludes histories itself and never the target.

    Returns:
        (len(rows), I) float32 tensor on the CPU.
    """
    selected = np.arange(output.codes.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    leaves = torch.as_tensor(output.leaves[selected])
    scores = torch.as_tensor(output.scores[selected])
    matrix = torch.full((len(selected), trie.n_items), NEG_INF, dtype=torch.float32)
    valid = leaves >= 0
    if bool(valid.any()):
        row_ids, slot = torch.nonzero(valid, as_tuple=True)
        leaf = leaves[row_ids, slot]
        leaf_indptr, leaf_items = trie.leaf_indptr.cpu(), trie.leaf_items.cpu()
        counts = leaf_indptr[leaf + 1] - leaf_indptr[leaf]
        expanded_rows = torch.repeat_interleave(row_ids, counts)
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(leaf_indptr[leaf] - offsets, counts) + torch.arange(int(counts.sum()))
        matrix[expanded_rows, leaf_items[positions]] = torch.repeat_interleave(scores[row_ids, slot], counts)
    if histories is not None:
        if len(histories) != len(selected):
            raise ValueError(f"histories has {len(histories)} rows for {len(selected)} output rows.")
        indptr, indices = histories_to_csr(list(histories), len(selected))
        history_rows = np.repeat(np.arange(len(selected)), np.diff(indptr))
        matrix[torch.as_tensor(history_rows), torch.as_tensor(indices)] = NEG_INF
    return matrix


def generation_score_fn(
    output: GenerationOutput, trie: CodeTrie, users: Sequence[int] | np.ndarray
) -> Callable[[Tensor], Tensor]:
    """A ``score_fn`` for :func:`~tokenrec_pipeline.models.evaluation.evaluate_ranking`.

    Args:
        output: Decoded tuples, row i for ``users[i]`` (users must be distinct).
        trie: The code table.
        users: (N,) user ids, row-aligned with ``output``.

    Returns:
        ``score_fn(user_ids (B,)) -> (B, I)`` built on the fly per batch (no N x I matrix is kept).
    """
    users_np = np.asarray(users, dtype=np.int64)
    if len(np.unique(users_np)) != len(users_np):
        raise ValueError("users must be distinct to look up their generated rows.")
    row_of = {int(u): r for r, u in enumerate(users_np.tolist())}

    def score_fn(user_ids: Tensor) -> Tensor:
        return generation_score_matrix(output, trie, rows=[row_of[int(u)] for u in user_ids.tolist()])

    return score_fn


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


def _resolve_decoder(config: AutoregressiveConfig, kind: str) -> DecoderKind:
    if config.decoder == "auto":
        return "backbone" if kind == "encoder_decoder" else "head"
    if config.decoder not in ("head", "backbone"):
        raise ValueError(f"decoder must be 'auto', 'head' or 'backbone', got {config.decoder!r}.")
    if config.decoder == "backbone" and kind != "encoder_decoder":
        raise ValueError(
            f"decoder='backbone' needs an encoder-decoder checkpoint (T5-style); {config.backbone!r} is {kind!r}. "
            "Use decoder='head' (a small decoder on top of the backbone)."
        )
    return config.decoder  # type: ignore[return-value]


def _default_heads(dim: int) -> int:
    """Attention heads of about 64 dimensions each that divide ``dim`` (384 -> 6, 512 -> 8, 32 -> 1)."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def _cache_argument(model: nn.Module) -> str:
    """The name under which this transformers version takes the KV cache (``cache`` since 5.2x)."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


class AutoregressiveRecommender(nn.Module):
    """Backbone + autoregressive item-code decoder, trained with teacher forcing, decoded with beam search.

    Args:
        backbone: :class:`BackboneAdapter` with the ID tokens added; for ``decoder="backbone"`` its model is
            an ``AutoModelForSeq2SeqLM``.
        config: Architecture parameters.
        decoder: "head" or "backbone" (resolved, see :class:`AutoregressiveConfig`).
        new_token_ids: Ids of the added user/item tokens; n_user_tokens, n_item_tokens: their split.
    """

    def __init__(
        self,
        backbone: BackboneAdapter,
        config: AutoregressiveConfig,
        decoder: DecoderKind,
        new_token_ids: Sequence[int] = (),
        n_user_tokens: int = 0,
        n_item_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.decoder_kind: DecoderKind = decoder
        self.new_token_ids = [int(i) for i in new_token_ids]
        self.n_user_tokens, self.n_item_tokens = int(n_user_tokens), int(n_item_tokens)
        k, l = config.n_codebooks, config.codebook_size
        ids = backbone.tokenizer.convert_tokens_to_ids(config.item_tokens())
        if any(i is None or i == backbone.tokenizer.unk_token_id for i in ids):
            raise ValueError("The item tokens are not in the tokenizer; build the model with build_autoregressive.")
        # (K, L) vocabulary ids of <i{k}-{c}>: what the seq2seq decoder reads and emits.
        self.register_buffer("code_token_ids", torch.tensor(ids, dtype=torch.long).view(k, l), persistent=False)
        self.head: CodeDecoderHead | None = None
        if decoder == "head":
            dim = config.head_dim or backbone.hidden_size
            heads = config.head_heads or _default_heads(dim)
            self.head = CodeDecoderHead(
                backbone.hidden_size, k, l, dim, heads, config.head_ff_dim or 4 * dim, config.head_layers,
                config.head_dropout,
            )
        self.to(backbone.device)

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def n_codebooks(self) -> int:
        return self.config.n_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # -- encoding ----------------------------------------------------------------------------------------------

    def _memory(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Per-token prompt states for the head: (B, S) -> (B, S, D)."""
        base = self.backbone.base_model
        kind = self.backbone.kind
        if kind == "encoder_decoder":
            hidden = base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        elif kind == "decoder":
            extra: dict[str, Any] = {}
            arguments = _forward_parameters(base)
            if "use_cache" in arguments:
                extra["use_cache"] = False
            if "position_ids" in arguments:  # count real tokens only, so left padding is harmless
                extra["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = base(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        else:
            hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        assert self.head is not None
        return self.head.memory_proj(hidden.to(self.head.memory_proj.weight.dtype))

    def code_logits(self, input_ids: Tensor, attention_mask: Tensor, target_codes: Tensor) -> Tensor:
        """Teacher-forced logits of every code position.

        Args:
            input_ids, attention_mask: (B, S) tokenised prompts.
            target_codes: (B, K) target tuples.

        Returns:
            (B, K, L) float32 logits; position k is codebook k given the target's first k codes.
        """
        if self.head is not None:
            memory = self._memory(input_ids, attention_mask)
            return self.head(memory, attention_mask, target_codes).float()
        model = self.backbone.model
        steps = torch.arange(self.n_codebooks, device=target_codes.device)
        tokens = self.code_token_ids[steps, target_codes]  # (B, K)
        start = torch.full_like(tokens[:, :1], self.backbone.decoder_start_token_id())
        decoder_input_ids = torch.cat([start, tokens[:, :-1]], dim=1)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits  # (B, K, V)
        allowed = self.code_token_ids.unsqueeze(0).expand(logits.shape[0], -1, -1)
        return logits.gather(2, allowed).float()

    def loss(
        self, input_ids: Tensor, attention_mask: Tensor, target_codes: Tensor, label_smoothing: float = 0.0
    ) -> Tensor:
        """Mean cross-entropy over the K code positions (scalar)."""
        logits = self.code_logits(input_ids, attention_mask, target_codes)
        return F.cross_entropy(
            logits.reshape(-1, self.codebook_size), target_codes.reshape(-1), label_smoothing=label_smoothing
        )

    # -- incremental decoding (both decoders behind one interface) ---------------------------------------------

    def _start(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Any]:
        """Encode a batch of prompts once; returns the decoding state with one beam (BOS) per prompt."""
        if self.head is not None:
            return self.head.start(self._memory(input_ids, attention_mask), attention_mask)
        model = self.backbone.model
        encoder_states = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return {
            "encoder_states": encoder_states,
            "mask": attention_mask,
            "prompt_of_row": torch.arange(input_ids.shape[0], device=input_ids.device),
            "cache": None,
            "width": 1,
        }

    def _step(self, state: dict[str, Any], level: int, previous: Tensor | None) -> Tensor:
        """(B*W, L) logits of codebook ``level`` for every beam."""
        if self.head is not None:
            return self.head.step(state, level, previous)
        model = self.backbone.model
        rows = state["prompt_of_row"]
        if previous is None:
            tokens = torch.full((rows.shape[0], 1), self.backbone.decoder_start_token_id(), device=rows.device)
        else:
            tokens = self.code_token_ids[level - 1][previous].unsqueeze(1)
        arguments: dict[str, Any] = {"use_cache": True}
        if state["cache"] is not None:
            arguments[_cache_argument(model)] = state["cache"]
        output = model(
            encoder_outputs=(state["encoder_states"][rows],),
            attention_mask=state["mask"][rows],
            decoder_input_ids=tokens,
            **arguments,
        )
        state["cache"] = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        return output.logits[:, -1].gather(1, self.code_token_ids[level].unsqueeze(0).expand(tokens.shape[0], -1))

    def _reorder(self, state: dict[str, Any], parent_rows: Tensor, width: int) -> None:
        """Keep the states of the surviving beams; ``parent_rows`` (B*W_new,) indexes the old rows."""
        if self.head is not None:
            self.head.reorder(state, parent_rows, width)
            return
        state["cache"].reorder_cache(parent_rows)
        state["prompt_of_row"] = state["prompt_of_row"][parent_rows]
        state["width"] = width

    # -- beam search -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _beam_search_batch(
        self,
        batch: dict[str, Tensor],
        trie: CodeTrie,
        beam_size: int,
        num_return: int,
        constrained: bool,
        dead: Mapping[int, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Beam search for B prompts.

        Args:
            batch: Tokenised prompts ((B, S) ids and mask) on the model device.
            trie: On the model device.
            beam_size: W.
            num_return: Tuples kept per prompt (<= W).
            constrained: Mask codes that leave the trie.
            dead: ``{depth: (B, F) node ids}`` the beams must not enter (excluded items, see :meth:`_dead_nodes`).

        Returns:
            ``(codes (B, num_return, K), scores (B, num_return), leaves (B, num_return))`` on the device.
        """
        b = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        l, k_total = self.codebook_size, self.n_codebooks
        state = self._start(batch["input_ids"], batch["attention_mask"])
        scores = torch.zeros(b, 1, device=device)
        nodes = torch.zeros(b, dtype=torch.long, device=device)  # trie node of each beam (-1: left the trie)
        codes = torch.zeros(b, 1, 0, dtype=torch.long, device=device)
        previous: Tensor | None = None
        width = 1
        batch_rows = torch.arange(b, device=device)
        for level in range(k_total):
            logits = self._step(state, level, previous).float()  # (B*W, L)
            children = trie.children(level, nodes)  # (B*W, L)
            blocked = children < 0 if constrained else torch.zeros_like(children, dtype=torch.bool)
            if level + 1 in dead:
                blocked = blocked | self._blocked_children(trie, level, nodes, dead[level + 1], width)
            logits = logits.masked_fill(blocked, NEG_INF)
            log_probs = torch.log_softmax(logits, dim=-1)
            # A row with every code blocked (a dead or padding beam) gives NaN; it has no continuation. (Not
            # nan_to_num: it would also turn -inf into the lowest finite float, reviving blocked codes.)
            log_probs = log_probs.masked_fill(torch.isnan(log_probs), NEG_INF)
            total = (scores.unsqueeze(-1) + log_probs.view(b, width, l)).view(b, width * l)
            new_width = min(beam_size, width * l)
            scores, flat = total.topk(new_width, dim=1)  # sorted, best first
            parent_beam, chosen = flat // l, flat % l
            parent_rows = (batch_rows.unsqueeze(1) * width + parent_beam).view(-1)
            nodes = children.view(b, width, l)[batch_rows.unsqueeze(1), parent_beam, chosen].view(-1)
            codes = torch.cat([codes[batch_rows.unsqueeze(1), parent_beam], chosen.unsqueeze(-1)], dim=2)
            previous = chosen.view(-1)
            width = new_width
            if level < k_total - 1:
                self._reorder(state, parent_rows, width)
        scores, codes, nodes = scores[:, :num_return], codes[:, :num_return], nodes.view(b, width)[:, :num_return]
        empty = torch.isneginf(scores)
        codes = codes.masked_fill(empty.unsqueeze(-1), -1)
        leaves = nodes.masked_fill(empty, -1)
        return codes, scores, leaves

    @staticmethod
    def _blocked_children(trie: CodeTrie, level: int, nodes: Tensor, dead: Tensor, width: int) -> Tensor:
        """(B*W, L) True where a beam's next code would lead to a dead node of its prompt.

        A depth-(k+1) node is fixed by its depth-k parent and its code, so a beam is affected only when its node
        equals a dead node's parent: a (B, W, F) comparison instead of looking up all B*W*L candidates.

        Args:
            level: Step k; ``nodes`` (B*W,) are the beams' depth-k nodes.
            dead: (B, F) depth-(k+1) node ids per prompt, -1 padded.
        """
        b = dead.shape[0]
        key = trie.keys[level][dead.clamp(min=0)]
        parent, code = key // trie.codebook_size, key % trie.codebook_size
        parent = parent.masked_fill(dead < 0, -2)  # -2 never equals a node id (dead beams are -1)
        hits = nodes.view(b, width, 1) == parent.unsqueeze(1)  # (B, W, F)
        prompt, beam, slot = torch.nonzero(hits, as_tuple=True)
        mask = torch.zeros(b * width, trie.codebook_size, dtype=torch.bool, device=nodes.device)
        mask[prompt * width + beam, code[prompt, slot]] = True
        return mask

    def _dead_nodes(
        self, trie: CodeTrie, exclude: Sequence[Sequence[int]], rows: Sequence[int], prune_prefixes: bool
    ) -> dict[int, Tensor]:
        """Per depth, the nodes each prompt must not enter because of its excluded items.

        A leaf is dead when all of its items are excluded (a tuple shared with another item stays: that item is
        still a recommendation). With ``prune_prefixes`` (constrained mode) a shorter prefix is dead too when all
        of its children are, so no beam walks into a subtree that can only end in excluded items -- otherwise a
        beam whose single completion is a history item would die at the last step and leave its slot empty.
        Unconstrained decoding blocks only the excluded tuples themselves.

        Returns:
            ``{depth: (B, F) node ids, -1 padded}`` for the depths (1..K) that have any dead node.
        """
        k_total = trie.n_codebooks
        leaf_indptr = trie.leaf_indptr.cpu().numpy()
        item_leaf = trie.item_leaf.cpu().numpy()
        keys = [t.cpu().numpy() for t in trie.keys]
        indptr = [t.cpu().numpy() for t in trie.indptr]
        per_depth: dict[int, list[np.ndarray]] = {depth: [] for depth in range(1, k_total + 1)}
        for row in rows:
            items = np.unique(np.asarray(list(exclude[row]), dtype=np.int64))
            items = items[(items >= 0) & (items < trie.n_items)]
            leaves, counts = np.unique(item_leaf[items], return_counts=True)
            dead = leaves[counts == leaf_indptr[leaves + 1] - leaf_indptr[leaves]]
            per_depth[k_total].append(dead)
            for depth in range(k_total - 1, 0, -1):
                if prune_prefixes and dead.size:
                    parents, n_dead = np.unique(keys[depth][dead] // trie.codebook_size, return_counts=True)
                    dead = parents[n_dead == indptr[depth][parents + 1] - indptr[depth][parents]]
                else:
                    dead = dead[:0]
                per_depth[depth].append(dead)
        tables: dict[int, Tensor] = {}
        for depth, lists in per_depth.items():
            width = max((len(d) for d in lists), default=0)
            if width:
                table = np.full((len(lists), width), -1, dtype=np.int64)
                for index, nodes in enumerate(lists):
                    table[index, : len(nodes)] = nodes
                tables[depth] = torch.from_numpy(table).to(self.device)
        return tables

    def generate(
        self,
        prompts: Sequence[str],
        trie: CodeTrie,
        beam_size: int = 20,
        num_return: int | None = None,
        mode: DecodeMode = "constrained",
        exclude: Sequence[Sequence[int]] | None = None,
        batch_size: int = 64,
        show_progress: bool = False,
        precision: str | None = None,
    ) -> GenerationOutput:
        """Beam-search the top tuples for each prompt (eval mode, no gradients).

        Args:
            prompts: N prompt strings.
            trie: :class:`CodeTrie` of the item code table (moved to the model device if needed).
            beam_size: W; ``beam_size=1`` is greedy decoding.
            num_return: Tuples returned per prompt (default W, at most W).
            mode: "constrained" (only real items) or "unconstrained" (any tuple; invalid ones counted).
            exclude: Optional per-prompt item ids (the history) never to complete.
            batch_size: Prompts per batch (sorted by length to limit padding; results in input order).
            show_progress: tqdm bar over batches.
            precision: "auto" | "fp32" | "bf16" | "fp16" | "int8"; ``None``: ``config.inference_precision``.

        Returns:
            :class:`GenerationOutput` with N rows.
        """
        if mode not in DECODE_MODES:
            raise ValueError(f"mode must be one of {DECODE_MODES}, got {mode!r}.")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
        if (trie.n_codebooks, trie.codebook_size) != (self.n_codebooks, self.codebook_size):
            raise ValueError(
                f"The code table has K={trie.n_codebooks}, L={trie.codebook_size}; the model was built for "
                f"K={self.n_codebooks}, L={self.codebook_size}."
            )
        num_return = min(num_return or beam_size, beam_size)
        prompts = list(prompts)
        if exclude is not None and len(exclude) != len(prompts):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(prompts)} prompts.")
        if trie.device != self.device:
            trie.to(self.device)
        started = time.perf_counter()
        n = len(prompts)
        out_codes = np.full((n, num_return, self.n_codebooks), -1, dtype=np.int64)
        out_scores = np.full((n, num_return), NEG_INF, dtype=np.float32)
        out_leaves = np.full((n, num_return), -1, dtype=np.int64)
        order = sorted(range(n), key=lambda i: len(prompts[i]))
        resolved = resolve_precision(
            self.config.inference_precision if precision is None else precision, self.device, inference=True,
            parameter="autoregressive.model.inference_precision" if precision is None else "precision",
        )
        model = int8_copy(self) if resolved == "int8" else self
        was_training = self.training
        self.eval()
        try:
            for start in tqdm(range(0, n, batch_size), disable=not show_progress, desc="beam search"):
                rows = order[start : start + batch_size]
                batch = self.backbone.tokenize([prompts[i] for i in rows])
                dead = {} if exclude is None else self._dead_nodes(trie, exclude, rows, mode == "constrained")
                with autocast(self.device, resolved):
                    codes, scores, leaves = model._beam_search_batch(
                        batch, trie, beam_size, num_return, mode == "constrained", dead
                    )
                width = scores.shape[1]  # < num_return only when L^K is smaller than the beam
                out_codes[rows, :width] = codes.cpu().numpy()
                out_scores[rows, :width] = scores.float().cpu().numpy()
                out_leaves[rows, :width] = leaves.cpu().numpy()
        finally:
            self.train(was_training)
        output = GenerationOutput(out_codes, out_scores, out_leaves, mode, beam_size, time.perf_counter() - started)
        if output.n_invalid:
            logger.info(
                "%s beam search (W=%d): %d of %d generated tuples are no item's (invalid rate %.3f).",
                mode, beam_size, output.n_invalid, output.n_generated, output.invalid_rate,
            )
        return output

    @torch.no_grad()
    def greedy(
        self, prompts: Sequence[str], trie: CodeTrie, mode: DecodeMode = "constrained", batch_size: int = 64
    ) -> GenerationOutput:
        """Greedy decoding (argmax per step), written independently of the beam search as a reference.

        Returns:
            :class:`GenerationOutput` with one tuple per prompt.
        """
        prompts = list(prompts)
        if trie.device != self.device:
            trie.to(self.device)
        was_training = self.training
        self.eval()
        codes_out, scores_out, leaves_out = [], [], []
        try:
            for start in range(0, len(prompts), batch_size):
                batch = self.backbone.tokenize(prompts[start : start + batch_size])
                state = self._start(batch["input_ids"], batch["attention_mask"])
                b = batch["input_ids"].shape[0]
                nodes = torch.zeros(b, dtype=torch.long, device=self.device)
                score = torch.zeros(b, device=self.device)
                chosen: list[Tensor] = []
                previous: Tensor | None = None
                for level in range(self.n_codebooks):
                    logits = self._step(state, level, previous).float()
                    children = trie.children(level, nodes)
                    if mode == "constrained":
                        logits = logits.masked_fill(children < 0, NEG_INF)
                    log_probs = torch.log_softmax(logits, dim=-1)
                    previous = log_probs.argmax(dim=-1)
                    score = score + log_probs.gather(1, previous.unsqueeze(1)).squeeze(1)
                    nodes = children.gather(1, previous.unsqueeze(1)).squeeze(1)
                    chosen.append(previous)
                codes_out.append(torch.stack(chosen, dim=1).cpu())
                scores_out.append(score.cpu())
                leaves_out.append(nodes.cpu())
        finally:
            self.train(was_training)
        return GenerationOutput(
            torch.cat(codes_out).unsqueeze(1).numpy(),
            torch.cat(scores_out).unsqueeze(1).numpy().astype(np.float32),
            torch.cat(leaves_out).unsqueeze(1).numpy(),
            mode,
            1,
        )

    # -- persistence -------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write ``autoregressive_config.json``, ``tokenizer/``, ``backbone/`` (``save_pretrained``) and, for the
        head decoder, ``decoder_head.safetensors``; staged in a sibling folder and renamed into place."""
        refusal = "is not an autoregressive model folder; refusing to overwrite."
        with staged_folder(folder, CONFIG_FILE, refusal) as staging:
            self.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
            self.backbone.model.save_pretrained(staging / BACKBONE_DIR)
            if self.head is not None:
                state = {name: t.detach().cpu().contiguous() for name, t in self.head.state_dict().items()}
                save_file(state, str(staging / HEAD_FILE))
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": self.backbone.kind,
                "decoder": self.decoder_kind,
                "hidden_size": self.backbone.hidden_size,
                "new_token_ids": self.new_token_ids,
                "n_user_tokens": self.n_user_tokens,
                "n_item_tokens": self.n_item_tokens,
            }
            (staging / CONFIG_FILE).write_text(json.dumps({"config": asdict(self.config), "state": meta}, indent=2))


def _load_transformer(
    path: str, local: bool, tokenizer_path: str, tokenizer_local: bool, decoder: DecoderKind, dtype: str
) -> tuple[nn.Module, Any]:
    """Model (``AutoModelForSeq2SeqLM`` for the backbone decoder, else ``AutoModel``) and tokenizer."""
    auto = AutoModelForSeq2SeqLM if decoder == "backbone" else AutoModel
    model = auto.from_pretrained(path, local_files_only=local, dtype=_torch_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=tokenizer_local)
    return model, tokenizer


def build_autoregressive(
    config: AutoregressiveConfig,
    user_tokens: Sequence[str] = (),
    user_token_vectors: Tensor | None = None,
    item_token_vectors: Tensor | None = None,
    device: str | torch.device | None = None,
) -> AutoregressiveRecommender:
    """Load the backbone, add the user and item ID tokens, attach the decoder.

    The item vocabulary is ``token_vocabulary(K, L, item_token_prefix)``, the same tokens the prompts use,
    so the prompts of the llm4rec stage work unchanged.

    Args:
        config: Architecture parameters.
        user_tokens: User token vocabulary (``<u1-0>`` ...), may be empty.
        user_token_vectors, item_token_vectors: Optional (T, d_c) codebook vectors for the token
            initialisation of :func:`~tokenrec_pipeline.models.llm4rec.add_recommendation_tokens`.
        device: "cuda", "cpu", ...; ``None`` picks CUDA when available.

    Returns:
        The model in train mode on ``device``.
    """
    torch.manual_seed(config.seed)
    model_path, model_local = resolve_backbone_path(config.backbone)
    tokenizer_path, tokenizer_local = resolve_backbone_path(config.tokenizer or config.backbone)
    hf_config = AutoConfig.from_pretrained(model_path, local_files_only=model_local)
    kind = detect_backbone_kind(hf_config) if config.kind == "auto" else config.kind
    decoder = _resolve_decoder(config, kind)
    if decoder == "head":
        backbone = BackboneAdapter.from_pretrained(
            config.backbone, config.tokenizer, kind=kind,  # type: ignore[arg-type]
            max_length=config.max_length, truncation_side=config.truncation_side,  # type: ignore[arg-type]
            dtype=config.dtype,
        )
    else:
        model, tokenizer = _load_transformer(
            model_path, model_local, tokenizer_path, tokenizer_local, decoder, config.dtype
        )
        backbone = BackboneAdapter(
            model, tokenizer, kind="encoder_decoder", max_length=config.max_length,
            truncation_side=config.truncation_side,  # type: ignore[arg-type]
        )
    item_tokens = config.item_tokens()
    overlap = set(user_tokens) & set(item_tokens)
    if overlap:
        raise ValueError(f"User and item tokens overlap ({sorted(overlap)[:3]}); use different prefixes.")
    user_ids = add_recommendation_tokens(
        backbone, user_tokens, user_token_vectors, config.token_init_scale, config.seed
    )
    item_ids = add_recommendation_tokens(
        backbone, item_tokens, item_token_vectors, config.token_init_scale, config.seed + 1
    )
    torch.manual_seed(config.seed)  # the head's initialisation does not depend on the vocabulary sizes
    model = AutoregressiveRecommender(backbone, config, decoder, user_ids + item_ids, len(user_ids), len(item_ids))
    model.to(resolve_device(device))
    model.train()
    return model


def load_autoregressive(
    folder: str | os.PathLike[str], device: str | torch.device | None = None
) -> AutoregressiveRecommender:
    """Load a model written by :meth:`AutoregressiveRecommender.save_pretrained` (safetensors, no pickle).

    Returns:
        The model in eval mode.
    """
    source = Path(folder)
    saved = read_saved_config(source, CONFIG_FILE, FORMAT_VERSION, "train and save the autoregressive baseline first")
    config = AutoregressiveConfig.from_dict(saved["config"])
    meta = saved["state"]
    decoder: DecoderKind = meta["decoder"]
    model, tokenizer = _load_transformer(
        str(source / BACKBONE_DIR), True, str(source / TOKENIZER_DIR), True, decoder, config.dtype
    )
    backbone = BackboneAdapter(
        model, tokenizer, kind=meta["kind"], max_length=config.max_length,
        truncation_side=config.truncation_side,  # type: ignore[arg-type]
    )
    recommender = AutoregressiveRecommender(
        backbone, config, decoder, meta.get("new_token_ids", []), meta.get("n_user_tokens", 0),
        meta.get("n_item_tokens", 0),
    )
    if recommender.head is not None:
        recommender.head.load_state_dict(load_file(str(source / HEAD_FILE)))
    recommender.to(resolve_device(device))
    recommender.eval()
    return recommender


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AutoregressiveTrainConfig(LoopConfig):
    """Training parameters of :func:`train_autoregressive`: llm4rec's
    :class:`~tokenrec_pipeline.models.llm4rec.LoopConfig` (same meanings; ``head_learning_rate`` is the
    decoder head's, 1e-3 by default) plus label smoothing; without ``validate_fn`` the training loss is
    monitored.

    Attributes:
        label_smoothing: Cross-entropy label smoothing.
    """

    PARAMETERS: ClassVar[str] = "autoregressive training"

    head_learning_rate: float | None = 1e-3
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
        llm4rec's :class:`~tokenrec_pipeline.models.llm4rec.TrainResult`; the model ends in eval mode
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


# --------------------------------------------------------------------------------------------------------------
# Evaluation with the project's evaluator
# --------------------------------------------------------------------------------------------------------------


def evaluate_generation(
    model: AutoregressiveRecommender,
    prompts: Sequence[str],
    users: Sequence[int] | np.ndarray,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int] | np.ndarray,
    trie: CodeTrie,
    beam_size: int = 20,
    mode: DecodeMode = "constrained",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    show_progress: bool = False,
) -> tuple[RankingResult, GenerationOutput]:
    """HR@K / NDCG@K of beam-search generation under the project's protocol.

    Decoding excludes each user's history items other than the target -- the evaluator's own rule
    (history -inf, the target never excluded); under the project's dedup each pair occurs once, so this is
    simply the history. Items outside the beam score -inf (see :func:`generation_score_matrix`); with
    ``beam_size < max(ks)`` the deeper cut-offs are filled by chance only, hence the warning.

    Returns:
        The evaluator's :class:`~tokenrec_pipeline.models.evaluation.RankingResult` (its ``metrics`` gain
        ``invalid_rate``) and the raw :class:`GenerationOutput`.
    """
    targets_np = np.asarray(targets, dtype=np.int64)
    if beam_size < max(ks):
        warnings.warn(
            f"beam_size {beam_size} < max cut-off {max(ks)}: items beyond the beam are unranked (-inf), so "
            f"HR@{max(ks)} only gains chance-level credit past the beam.",
            stacklevel=2,
        )
    exclude = [[int(i) for i in h if int(i) != int(t)] for h, t in zip(histories, targets_np.tolist(), strict=True)]
    output = model.generate(prompts, trie, beam_size, mode=mode, exclude=exclude, batch_size=batch_size,
                            show_progress=show_progress)
    score_fn = generation_score_fn(output, trie, users)
    result = evaluate_ranking(users, list(histories), targets_np, score_fn=score_fn, ks=ks)
    result.metrics["invalid_rate"] = float(output.invalid_rate)
    return result, output
