"""The autoregressive baseline's architecture parameters (:class:`AutoregressiveConfig`), decoder and decoding
mode names, and the file layout of a saved model folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tokenrec_pipeline.core.params import dataclass_from_dict
from tokenrec_pipeline.models.backbone import DEFAULT_BACKBONE
from tokenrec_pipeline.models.precision import check_precision
from tokenrec_pipeline.models.tokenizers.tokens import ITEM_TOKEN_PREFIX, token_vocabulary

DecoderKind = Literal["head", "backbone"]
DecodeMode = Literal["constrained", "unconstrained"]
DECODE_MODES: tuple[str, ...] = ("constrained", "unconstrained")


CONFIG_FILE = "autoregressive_config.json"
HEAD_FILE = "decoder_head.safetensors"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1

SAVED_CONFIG_DEFAULTS: dict[str, Any] = {"max_length": 128, "truncation_side": "right", "inference_precision": "fp32"}
"""What a key missing from a saved ``autoregressive_config.json`` means (:meth:`AutoregressiveConfig.from_saved`): the
dataclass defaults of the code that wrote it, from before the defaults became the parameter files'."""


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
        token_init_scale: See :func:`~tokenrec_pipeline.models.backbone.add_recommendation_tokens`.
        dtype: Backbone weight dtype ("float32", "bfloat16", "float16", "auto"); the head stays float32.
        seed: Seeds token initialisation and the head.
        inference_precision: "auto" | "fp32" | "bf16" | "fp16" | "int8" of :meth:`AutoregressiveRecommender.generate`
            (resolved where the model runs; see :mod:`tokenrec_pipeline.models.precision`).

    The defaults are the parameter files' (``tests/test_parameter_defaults.py`` keeps them in step):
    ``autoregressive.model`` of ``conf/base/parameters_autoregressive.yml``, and for ``backbone``, ``max_length``,
    ``truncation_side`` and ``token_init_scale`` ``llm4rec.model`` (the stage shares the language model's).
    """

    backbone: str = DEFAULT_BACKBONE
    tokenizer: str | None = None
    kind: str = "auto"
    decoder: str = "auto"
    n_codebooks: int = 3
    codebook_size: int = 256
    item_token_prefix: str = ITEM_TOKEN_PREFIX
    max_length: int = 96
    truncation_side: str = "left"
    head_layers: int = 2
    head_dim: int = 0
    head_heads: int = 0
    head_ff_dim: int = 0
    head_dropout: float = 0.1
    token_init_scale: float = 0.5
    dtype: str = "float32"
    seed: int = 0
    inference_precision: str = "auto"

    def __post_init__(self) -> None:
        self.inference_precision = check_precision(
            self.inference_precision, inference=True, parameter="autoregressive.model.inference_precision"
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AutoregressiveConfig:
        """Build from a parameters mapping, rejecting unknown keys."""
        return dataclass_from_dict(cls, values, "autoregressive model")

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> AutoregressiveConfig:
        """Build from a saved folder's ``config``: :meth:`from_dict` with :data:`SAVED_CONFIG_DEFAULTS` for the keys
        that folders written before those options existed lack."""
        return cls.from_dict({**SAVED_CONFIG_DEFAULTS, **values})

    def item_tokens(self) -> list[str]:
        """The K*L item tokens, codebook-major (``<i1-0> ... <i1-{L-1}> <i2-0> ...``)."""
        return token_vocabulary(self.n_codebooks, self.codebook_size, self.item_token_prefix)
