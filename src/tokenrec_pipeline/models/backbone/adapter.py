"""The pooling adapter: a transformers model plus tokenizer that turns prompts into one vector each.

:class:`BackboneAdapter` loads any Hugging Face checkpoint (hub id or local folder, ``AutoModel``/
``AutoTokenizer``) and pools it to one vector per prompt: encoder-only models mean-pool the last hidden state
over non-pad tokens; encoder-decoder models (T5) take the decoder's hidden state at the decoder start token
(one decoder position; the authors' code instead runs a fixed multi-token decoder prompt and flattens all of
its positions into their projection layer) or mean-pool the encoder; decoder-only models take the hidden
state of the last non-pad token (left or right padding). :func:`forward_parameters` tells which optional
keyword arguments a model's ``forward`` accepts.

Shapes: ``B`` batch, ``L`` sequence length, ``H`` backbone hidden size.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from tokenrec_pipeline.models.backbone.loading import (
    BACKBONE_KINDS,
    BackboneKind,
    detect_backbone_kind,
    from_pretrained_dtype,
    grow_embeddings,
    resolve_backbone_path,
)


def forward_parameters(module: nn.Module) -> set[str]:
    """Names of the keyword arguments a module's forward accepts (to pass optional ones only when valid)."""
    return set(inspect.signature(module.forward).parameters)


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class BackboneAdapter(nn.Module):
    """A transformers model plus tokenizer that turns prompts into one pooled vector each.

    Args:
        model: An ``AutoModel`` (no LM head), possibly wrapped by peft.
        tokenizer: Its tokenizer (any; a BERT WordPiece tokenizer works for a random model of any kind).
        kind: "encoder", "encoder_decoder" or "decoder"; ``None``/"auto" detects it from ``model.config``.
        t5_pooling: For encoder-decoder models: "decoder" (hidden state of the decoder at its start token; the
            authors flatten every position of a fixed multi-token decoder prompt instead) or "encoder" (mean of
            the encoder states, cheaper: no decoder pass).
        max_length: Prompts are truncated to this many tokens.
        truncation_side: "right" or "left" (left keeps the end of long prompts).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        kind: BackboneKind | Literal["auto"] | None = None,
        t5_pooling: Literal["decoder", "encoder"] = "decoder",
        max_length: int = 128,
        truncation_side: Literal["right", "left"] = "right",
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        base = self.base_model
        resolved = detect_backbone_kind(base.config) if kind in (None, "auto") else kind
        self.kind: BackboneKind = resolved  # type: ignore[assignment]
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(f"kind must be one of {BACKBONE_KINDS}, got {self.kind!r}.")
        if t5_pooling not in ("decoder", "encoder"):
            raise ValueError(f"t5_pooling must be 'decoder' or 'encoder', got {t5_pooling!r}.")
        self.t5_pooling = t5_pooling
        self.max_length = int(max_length)
        self.tokenizer.truncation_side = truncation_side
        if self.tokenizer.pad_token is None:
            raise ValueError("The tokenizer has no pad token; build the adapter with BackboneAdapter.from_pretrained.")
        self._forward_args = forward_parameters(base)

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        kind: BackboneKind | Literal["auto"] = "auto",
        t5_pooling: Literal["decoder", "encoder"] = "decoder",
        max_length: int = 128,
        truncation_side: Literal["right", "left"] = "right",
        dtype: str = "float32",
    ) -> BackboneAdapter:
        """Load model and tokenizer with ``AutoConfig``/``AutoModel``/``AutoTokenizer``.

        A decoder-only model without a pad token gets its EOS token as pad (pooling reads the attention
        mask, never the pad id, so this is safe), or a new ``<pad>`` token when it has no EOS either.
        """
        model_path, model_local = resolve_backbone_path(name_or_path)
        tokenizer_path, tokenizer_local = resolve_backbone_path(tokenizer_name_or_path or name_or_path)
        config = AutoConfig.from_pretrained(model_path, local_files_only=model_local)
        resolved_kind: BackboneKind = detect_backbone_kind(config) if kind == "auto" else kind
        torch_dtype = from_pretrained_dtype(dtype)
        model = AutoModel.from_pretrained(model_path, config=config, local_files_only=model_local, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=tokenizer_local)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            else:
                tokenizer.add_special_tokens({"pad_token": "<pad>"})
                grow_embeddings(model, len(tokenizer))
        return cls(model, tokenizer, resolved_kind, t5_pooling, max_length, truncation_side)

    # -- properties --------------------------------------------------------------------------------------------

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model (under a peft wrapper, the wrapped model with its adapters injected)."""
        return self.model.get_base_model() if _is_peft_model(self.model) else self.model

    @property
    def hidden_size(self) -> int:
        """Size ``H`` of the pooled vector."""
        config = self.base_model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for attribute in ("hidden_size", "d_model", "n_embd"):
            if getattr(text_config, attribute, None):
                return int(getattr(text_config, attribute))
        return int(self.base_model.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_peft(self) -> bool:
        return _is_peft_model(self.model)

    def decoder_start_token_id(self) -> int:
        """Id fed as the single decoder input for T5-style decoder pooling."""
        config = self.base_model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(config, "pad_token_id", None)
        if start is None:
            start = self.tokenizer.pad_token_id
        return int(start)

    # -- tokenisation and pooling ------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Batch-tokenise prompts (padding to the longest, truncating to ``max_length``) onto the model device.

        Returns:
            ``{"input_ids": (B, L) long, "attention_mask": (B, L) long}``.
        """
        encoded = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = self.device
        return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Each prompt's token ids, truncated to ``max_length`` and unpadded: tokenise a training set once,
        then :meth:`collate` each batch (the same tensors :meth:`tokenize` gives)."""
        return self.tokenizer(list(prompts), truncation=True, max_length=self.max_length)["input_ids"]

    def collate(self, token_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad pre-tokenised prompts (:meth:`token_ids`) to the batch's longest, on the tokenizer's padding side,
        onto the model device; returns what :meth:`tokenize` returns."""
        padded = self.tokenizer.pad({"input_ids": [list(ids) for ids in token_ids]}, padding=True, return_tensors="pt")
        device = self.device
        return {"input_ids": padded["input_ids"].to(device), "attention_mask": padded["attention_mask"].to(device)}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, inputs_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pool one hidden vector per prompt.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L), 1 for real tokens and 0 for padding (either side).
            inputs_embeds: Optional (B, L, H) input embeddings used instead of looking ``input_ids`` up
                (LLM4Rec passes them with its own ID-token rows substituted).

        Returns:
            (B, H) pooled hidden states.
        """
        base = self.base_model
        extra: dict[str, Any] = {"use_cache": False} if "use_cache" in self._forward_args else {}
        inputs: dict[str, torch.Tensor] = (
            {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        )
        if self.kind == "encoder":
            hidden = base(**inputs, attention_mask=attention_mask).last_hidden_state
            return _masked_mean(hidden, attention_mask)
        if self.kind == "encoder_decoder":
            if self.t5_pooling == "encoder":
                hidden = base.get_encoder()(**inputs, attention_mask=attention_mask).last_hidden_state
                return _masked_mean(hidden, attention_mask)
            # A fixed one-token decoder prompt: the decoder start token. Its hidden state attends to the whole
            # encoded prompt through cross-attention and serves as h_i (the authors' code projects the
            # flattened states of a longer fixed decoder prompt; one position keeps h_i the backbone's width).
            decoder_input_ids = torch.full(
                (input_ids.shape[0], 1), self.decoder_start_token_id(), dtype=torch.long, device=input_ids.device
            )
            hidden = base(
                **inputs, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, **extra
            ).last_hidden_state
            return hidden[:, 0]
        # Decoder-only: positions count real tokens only, so that left padding gives the same result as right
        # padding (models that derive positions from the sequence index would otherwise shift).
        if "position_ids" in self._forward_args:
            extra["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = base(**inputs, attention_mask=attention_mask, **extra).last_hidden_state
        # Index of the last real token per row, valid for left, right (or no) padding.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, H) hidden states over positions where the (B, L) mask is 1 -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
