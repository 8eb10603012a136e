"""peft/LoRA glue: wrap a backbone with LoRA adapters, the (resized) embeddings training with them.

:func:`enable_lora` wraps a :class:`~tokenrec_pipeline.models.backbone.adapter.BackboneAdapter`'s model;
:func:`default_lora_target_modules` picks the modules to adapt; :func:`retie_embedding_copies` keeps the
trainable embedding copies of tied models (T5) one parameter (also after loading a saved adapter).
peft is imported only when LoRA is used.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from torch import nn
from transformers import PreTrainedModel

from tokenrec_pipeline.models.backbone.adapter import BackboneAdapter

logger = logging.getLogger(__name__)


def default_lora_target_modules(model: PreTrainedModel) -> list[str] | str:
    """LoRA target modules for a model: peft's per-architecture default, else attention projections found
    by module name, else peft's ``"all-linear"``."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(model.config, "model_type", "")
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]
        return targets if isinstance(targets, str) else list(targets)
    attention_names = {"q_proj", "v_proj", "query", "value", "q", "v", "c_attn", "query_key_value", "qkv_proj", "Wqkv"}
    leaf_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    }
    found = sorted(leaf_names & attention_names)
    return found or "all-linear"


def _tied_input_embedding_names(model: PreTrainedModel) -> list[str]:
    """All embedding modules sharing the input embedding weight (T5: ``shared`` + encoder/decoder copies).

    peft's ``modules_to_save`` wraps modules by name; a tied model reads its embeddings through several
    modules, and only wrapping every one of them makes the trained copy reach the forward pass.
    """
    weight = model.get_input_embeddings().weight
    return [
        name
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, nn.Embedding) and module.weight is weight
    ]


def retie_embedding_copies(peft_model: nn.Module) -> None:
    """Make the trainable embedding copies of tied modules one shared parameter again.

    With ``modules_to_save`` each tied module (T5: ``shared``, ``encoder.embed_tokens``,
    ``decoder.embed_tokens``) gets its own copy; sharing one parameter keeps the tying of the original
    model, trains one matrix and stores one. No-op for untied models and for ``new_tokens`` mode.
    """
    base = peft_model.get_base_model()
    wrappers = [
        module
        for _, module in base.named_modules()
        if type(module).__name__ == "ModulesToSaveWrapper"
        and isinstance(getattr(module, "original_module", None), nn.Embedding)
    ]
    if len(wrappers) < 2:
        return
    first = wrappers[0].original_module.weight
    tied = [w for w in wrappers if w.original_module.weight is first]
    for adapter_name in tied[0].modules_to_save:
        shared = tied[0].modules_to_save[adapter_name].weight
        for wrapper in tied[1:]:
            wrapper.modules_to_save[adapter_name].weight = shared


def enable_lora(
    backbone: BackboneAdapter,
    new_token_ids: Sequence[int],
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str | None = None,
    embeddings: Literal["full", "new_tokens"] = "full",
) -> None:
    """Wrap the backbone with peft LoRA; base weights are frozen, adapters and the embeddings train.

    Args:
        backbone: The adapter; its ``model`` is replaced by the ``PeftModel``.
        new_token_ids: Ids of the added ID tokens.
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules: Module names; ``None`` uses :func:`default_lora_target_modules`.
        embeddings: "full": the whole resized embedding matrix trains and is saved with the adapter
            (``modules_to_save``; tied models get one trainable copy per tied module). "new_tokens": only the
            added rows train and are saved (peft ``trainable_token_indices``; a much smaller adapter).
    """
    from peft import LoraConfig, get_peft_model

    if backbone.is_peft:
        raise RuntimeError("LoRA is already enabled on this backbone.")
    model = backbone.base_model
    targets = target_modules if target_modules is not None else default_lora_target_modules(model)
    if not isinstance(targets, str):
        targets = list(targets)
    kwargs: dict[str, Any] = {}
    if embeddings == "full":
        kwargs["modules_to_save"] = _tied_input_embedding_names(model)
    elif embeddings == "new_tokens":
        kwargs["trainable_token_indices"] = sorted(set(int(i) for i in new_token_ids))
    else:
        raise ValueError(f"lora_embeddings must be 'full' or 'new_tokens', got {embeddings!r}.")
    # GPT-2 style models store projections as transposed Conv1D layers; peft needs to know (else it warns).
    kwargs["fan_in_fan_out"] = any(type(module).__name__ == "Conv1D" for module in model.modules())
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, **kwargs)
    with warnings.catch_warnings():
        # peft warns about tied layers in modules_to_save; retie_embedding_copies below handles them (peft's
        # own ensure_weight_tying assumes the tied partner is an LM head and breaks T5Model).
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        # peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing`; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        backbone.model = get_peft_model(model, config)
    retie_embedding_copies(backbone.model)
    trainable = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.model.parameters())
    logger.info("LoRA on %s (r=%d): %d of %d backbone parameters trainable.", targets, r, trainable, total)
