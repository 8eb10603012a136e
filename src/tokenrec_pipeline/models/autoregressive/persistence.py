"""Assembling and loading the autoregressive baseline: :func:`build_autoregressive` (backbone, ID tokens,
decoder) and :func:`load_autoregressive` (a folder written by
:meth:`~tokenrec_pipeline.models.autoregressive.model.AutoregressiveRecommender.save_pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

from tokenrec_pipeline.core.folders import read_saved_config
from tokenrec_pipeline.core.params import resolve_device
from tokenrec_pipeline.models.autoregressive.config import (
    BACKBONE_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    TOKENIZER_DIR,
    AutoregressiveConfig,
    DecoderKind,
)
from tokenrec_pipeline.models.autoregressive.model import AutoregressiveRecommender
from tokenrec_pipeline.models.backbone import (
    BackboneAdapter,
    add_recommendation_tokens,
    detect_backbone_kind,
    from_pretrained_dtype,
    resolve_backbone_path,
)


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


def _load_transformer(
    path: str, local: bool, tokenizer_path: str, tokenizer_local: bool, decoder: DecoderKind, dtype: str
) -> tuple[nn.Module, Any]:
    """Model (``AutoModelForSeq2SeqLM`` for the backbone decoder, else ``AutoModel``) and tokenizer."""
    auto = AutoModelForSeq2SeqLM if decoder == "backbone" else AutoModel
    model = auto.from_pretrained(path, local_files_only=local, dtype=from_pretrained_dtype(dtype))
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
            initialisation of :func:`~tokenrec_pipeline.models.backbone.add_recommendation_tokens`.
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
    config = AutoregressiveConfig.from_saved(saved["config"])
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
