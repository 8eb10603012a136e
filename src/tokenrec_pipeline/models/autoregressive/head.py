"""The decoder head for encoder-only and decoder-only backbones (:class:`CodeDecoderHead`).

A small pre-LN Transformer decoder that cross-attends to the backbone's per-token hidden states and predicts
codebook k's L codes at step k; teacher-forced in training (:meth:`CodeDecoderHead.forward`), cached and
incremental in beam search (:meth:`CodeDecoderHead.start`, :meth:`~CodeDecoderHead.step`,
:meth:`~CodeDecoderHead.reorder`).

Shapes: ``B`` prompts, ``W`` beams per prompt, ``S`` prompt length, ``H`` backbone hidden size, ``D`` head
width, ``K`` codebooks, ``L`` codes per codebook.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
