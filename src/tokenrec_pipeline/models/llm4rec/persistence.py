"""Assembling and loading LLM4Rec: :func:`build_llm4rec` (backbone, ID tokens, LoRA, head) and
:func:`load_llm4rec` (a folder written by :meth:`~tokenrec_pipeline.models.llm4rec.model.LLM4Rec.save_pretrained`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from tokenrec_pipeline.core.folders import read_saved_config
from tokenrec_pipeline.core.params import resolve_device
from tokenrec_pipeline.models.backbone import (
    BackboneAdapter,
    add_recommendation_tokens,
    enable_lora,
    from_pretrained_dtype,
    grow_embeddings,
    resolve_backbone_path,
    retie_embedding_copies,
)
from tokenrec_pipeline.models.item_space import max_item_norm
from tokenrec_pipeline.models.llm4rec.config import (
    BACKBONE_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    ID_TOKENS_FILE,
    TOKENIZER_DIR,
    USER_DECODER_DIR,
    LLM4RecConfig,
)
from tokenrec_pipeline.models.llm4rec.model import LLM4Rec
from tokenrec_pipeline.models.tokenizers import FittedTokenizer, load_tokenizer


def build_llm4rec(
    config: LLM4RecConfig,
    user_tokens: Sequence[str],
    item_tokens: Sequence[str],
    user_token_vectors: torch.Tensor | None = None,
    item_token_vectors: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    user_tokenizer: FittedTokenizer | None = None,
    item_vectors: torch.Tensor | None = None,
) -> LLM4Rec:
    """Load the backbone, add the ID tokens, optionally enable LoRA, attach the projection head.

    Args:
        config: Architecture parameters.
        user_tokens: User token vocabulary, e.g. ``["<u1-0>", ..., "<u3-255>"]``.
        item_tokens: Item token vocabulary (must not overlap the user one).
        user_token_vectors, item_token_vectors: Optional (T, d_c) codebook vectors for the initialisation
            described in :func:`add_recommendation_tokens`.
        device: "cuda", "cpu", ...; ``None`` picks CUDA when available.
        user_tokenizer: The fitted user tokenizer (needed by the "residual_user" head).
        item_vectors: The (I, d) training item vectors (their largest norm is the "mips" space's ``M``).

    Returns:
        The model, in train mode, on ``device``.
    """
    torch.manual_seed(config.seed)
    backbone = BackboneAdapter.from_pretrained(
        config.backbone,
        tokenizer_name_or_path=config.tokenizer,
        kind=config.kind,  # type: ignore[arg-type]
        t5_pooling=config.t5_pooling,  # type: ignore[arg-type]
        max_length=config.max_length,
        truncation_side=config.truncation_side,  # type: ignore[arg-type]
        dtype=config.dtype,
    )
    overlap = set(user_tokens) & set(item_tokens)
    if overlap:
        raise ValueError(f"User and item tokens overlap ({sorted(overlap)[:3]}); their vocabularies must differ.")
    user_ids = add_recommendation_tokens(
        backbone, user_tokens, user_token_vectors, config.token_init_scale, config.seed
    )
    item_ids = add_recommendation_tokens(
        backbone, item_tokens, item_token_vectors, config.token_init_scale, config.seed + 1
    )
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the inputs of a block do not require gradients (LoRA).
        transformer = backbone.base_model
        if hasattr(transformer, "activation_checkpointing_enable"):  # the name since transformers 5.2x
            transformer.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.use_lora:
        enable_lora(
            backbone,
            user_ids + item_ids,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            embeddings=config.lora_embeddings,  # type: ignore[arg-type]
        )
    model = LLM4Rec(backbone, config, user_ids + item_ids, len(user_ids), len(item_ids), user_tokenizer=user_tokenizer,
                    item_max_norm=max_item_norm(item_vectors) if item_vectors is not None else 1.0)
    model.to(resolve_device(device))
    model.train()
    return model


def load_llm4rec(
    folder: str | os.PathLike[str],
    device: str | torch.device | None = None,
    trainable: bool = False,
    backbone: str | None = None,
) -> LLM4Rec:
    """Load a model written by :meth:`LLM4Rec.save_pretrained` (safetensors only, no pickle).

    Args:
        folder: The saved folder.
        device: Target device (``None``: CUDA when available).
        trainable: Keep LoRA adapters trainable (to continue training); full models are always trainable.
        backbone: Override where a LoRA artefact's base model is loaded from (e.g. a local copy).

    Returns:
        The model in eval mode.
    """
    source = Path(folder)
    saved = read_saved_config(source, CONFIG_FILE, FORMAT_VERSION, "run the llm4rec pipeline first")
    config = LLM4RecConfig.from_saved(saved["config"])
    state = saved["state"]
    tokenizer = AutoTokenizer.from_pretrained(source / TOKENIZER_DIR, local_files_only=True)
    torch_dtype = from_pretrained_dtype(config.dtype)
    if state["lora"]:
        from peft import PeftModel

        base_path, local = resolve_backbone_path(backbone or config.backbone)
        try:
            base = AutoModel.from_pretrained(base_path, local_files_only=local, dtype=torch_dtype)
        except OSError as error:
            raise OSError(
                f"{source} is a LoRA adapter on {base_path!r}, which could not be loaded; pass "
                "`backbone=` with a local copy of that model."
            ) from error
        grow_embeddings(base, int(state["embedding_rows"]))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model: nn.Module = PeftModel.from_pretrained(base, source / BACKBONE_DIR, is_trainable=trainable)
        retie_embedding_copies(model)
    else:
        model = AutoModel.from_pretrained(source / BACKBONE_DIR, local_files_only=True, dtype=torch_dtype)
    adapter = BackboneAdapter(
        model,
        tokenizer,
        kind=state["kind"],
        t5_pooling=config.t5_pooling,  # type: ignore[arg-type]
        max_length=config.max_length,
        truncation_side=config.truncation_side,  # type: ignore[arg-type]
    )
    user_tokenizer = load_tokenizer(source / USER_DECODER_DIR) if config.head == "residual_user" else None
    llm4rec = LLM4Rec(
        adapter, config, state.get("new_token_ids", []), state.get("n_user_tokens", 0), state.get("n_item_tokens", 0),
        user_tokenizer=user_tokenizer, item_max_norm=state.get("item_max_norm", 1.0),
    )
    llm4rec.head.load_state_dict(load_file(str(source / HEAD_FILE)))
    if llm4rec.id_embeddings is not None:
        with torch.no_grad():
            llm4rec.id_embeddings.weight.copy_(load_file(str(source / ID_TOKENS_FILE))["weight"])
    llm4rec.to(resolve_device(device))
    llm4rec.eval()
    return llm4rec
