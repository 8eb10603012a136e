"""ID-token vocabulary: the user/item ID tokens added to a backbone's tokenizer and embedding matrix.

:func:`add_recommendation_tokens` adds tokens such as ``<u1-128>`` / ``<i2-7>`` (each must encode to exactly one
id, alone and written back to back) and initialises their embedding rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import AddedToken

from tokenrec_pipeline.models.backbone.adapter import BackboneAdapter
from tokenrec_pipeline.models.backbone.loading import grow_embeddings

logger = logging.getLogger(__name__)


def add_recommendation_tokens(
    backbone: BackboneAdapter,
    tokens: Sequence[str],
    init_vectors: torch.Tensor | None = None,
    init_scale: float = 0.5,
    seed: int = 0,
) -> list[int]:
    """Add user/item ID tokens to the tokenizer and the embedding matrix, and initialise their rows.

    Initialisation (why: new tokens should look like ordinary inputs to the pretrained layers, yet be
    distinguishable from each other from the first step):

    * default: ``mean + init_scale * std * eps`` per dimension, with ``mean``/``std`` taken over the
      pretrained rows and ``eps ~ N(0, 1)`` (``init_scale = 1`` samples a diagonal Gaussian fitted to the
      vocabulary, like transformers' ``mean_resizing`` does with a full covariance);
    * with ``init_vectors`` (e.g. each token's codebook vector, shape (T, d_c)): ``eps`` is replaced by the
      standardised vectors times a fixed random Gaussian (d_c, H) / sqrt(d_c) projection, so tokens whose
      codewords are close start close (a Johnson-Lindenstrauss style map; nothing is learnt here).

    Args:
        backbone: The adapter (not yet wrapped by peft).
        tokens: T distinct token strings without whitespace, e.g. ``<u1-0>``.
        init_vectors: Optional (T, d_c) vectors aligned with ``tokens``.
        init_scale: Spread of the new rows in units of the pretrained per-dimension std.
        seed: Seeds the noise / projection.

    Returns:
        The T token ids, in the order of ``tokens``.

    Raises:
        ValueError: Duplicate or whitespace-containing tokens, misaligned ``init_vectors``, or a token the
            tokenizer does not map to exactly one id.
    """
    if backbone.is_peft:
        raise RuntimeError("Add tokens before enabling LoRA: peft must see the resized embedding matrix.")
    tokens = list(tokens)
    if len(set(tokens)) != len(tokens):
        raise ValueError("Token list contains duplicates; user and item vocabularies must not overlap.")
    bad = [token for token in tokens if not token or any(char.isspace() for char in token)]
    if bad:
        raise ValueError(f"Tokens must be non-empty and contain no whitespace: {bad[:5]}")
    if init_vectors is not None and init_vectors.shape[0] != len(tokens):
        raise ValueError(f"init_vectors has {init_vectors.shape[0]} rows for {len(tokens)} tokens.")
    if not tokens:
        return []

    tokenizer, model = backbone.tokenizer, backbone.base_model
    vocabulary_before = len(tokenizer)
    # normalized=False: match the raw text. Tokenizers whose normaliser rewrites text (SentencePiece ones
    # that prepend "▁" or replace spaces) would otherwise fail to find the token and split it into pieces.
    tokenizer.add_tokens([AddedToken(token, normalized=False) for token in tokens])
    grow_embeddings(model, len(tokenizer))
    token_ids = [int(token_id) for token_id in tokenizer.convert_tokens_to_ids(tokens)]
    _check_single_ids(tokenizer, tokens, token_ids)

    # Initialise only tokens that are really new (a token that already existed keeps its pretrained row).
    new_rows = [row for row, token_id in enumerate(token_ids) if token_id >= vocabulary_before]
    if new_rows:
        weight = model.get_input_embeddings().weight
        with torch.no_grad():
            new_ids = torch.tensor([token_ids[row] for row in new_rows], device=weight.device)
            old = weight[:vocabulary_before].float()
            mean, std = old.mean(dim=0), old.std(dim=0)
            generator = torch.Generator().manual_seed(seed)
            if init_vectors is None:
                direction = torch.randn(len(new_rows), weight.shape[1], generator=generator)
            else:
                vectors = init_vectors.detach().float().cpu()[new_rows]
                vectors = (vectors - vectors.mean(dim=0)) / vectors.std(dim=0).clamp(min=1e-6)
                projection = torch.randn(vectors.shape[1], weight.shape[1], generator=generator)
                direction = vectors @ projection / math.sqrt(vectors.shape[1])
            rows = mean + init_scale * std * direction.to(weight.device)
            weight[new_ids] = rows.to(weight.dtype)
    logger.info("Added %d ID tokens (%d new) to the vocabulary (now %d).", len(tokens), len(new_rows), len(tokenizer))
    return token_ids


def _check_single_ids(tokenizer: Any, tokens: list[str], token_ids: list[int]) -> None:
    """Every token must encode to exactly its own id, alone and when tokens are written back to back."""
    encoded = tokenizer(tokens, add_special_tokens=False)["input_ids"]
    broken = [token for token, ids, token_id in zip(tokens, encoded, token_ids, strict=True) if ids != [token_id]]
    if broken:
        raise ValueError(f"These tokens do not map to a single id after add_tokens: {broken[:5]}")
    # Prompts write ID tokens without separators (<u1-3><u2-7>); check that they still split cleanly.
    chunk = 16
    for start in range(0, min(len(tokens), 256), chunk):
        joined = tokenizer("".join(tokens[start : start + chunk]), add_special_tokens=False)["input_ids"]
        if joined != token_ids[start : start + chunk]:
            raise ValueError(f"Adjacent ID tokens do not split into single ids: {tokens[start : start + 3]}")
