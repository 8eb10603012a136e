"""LLM4Rec's architecture parameters (:class:`LLM4RecConfig`) and the file layout of a saved model folder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenrec_pipeline.core.params import dataclass_from_dict
from tokenrec_pipeline.models.backbone import DEFAULT_BACKBONE
from tokenrec_pipeline.models.item_space import check_item_space
from tokenrec_pipeline.models.precision import check_precision

CONFIG_FILE = "llm4rec_config.json"
HEAD_FILE = "projection_head.safetensors"
TOKENIZER_DIR = "tokenizer"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1


HEADS: tuple[str, ...] = ("plain", "residual_user")
ID_TOKENS_FILE = "id_token_embeddings.safetensors"
USER_DECODER_DIR = "user_decoder"

SAVED_CONFIG_DEFAULTS: dict[str, Any] = {
    "max_length": 128,
    "truncation_side": "right",
    "item_space": "cosine",
    "head": "plain",
    "id_token_table": False,
    "inference_precision": "fp32",
}
"""What a key missing from a saved ``llm4rec_config.json`` means (:meth:`LLM4RecConfig.from_saved`): the dataclass
defaults of the code that wrote it (the paper's recipe), from before the defaults became those of
``parameters_llm4rec.yml``."""


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

    The defaults are ``llm4rec.model`` of ``conf/base/parameters_llm4rec.yml`` (the default recipe; the paper's is
    that block with ``llm4rec_paper.model`` over it), kept in step by ``tests/test_parameter_defaults.py``. A saved
    model's missing keys keep their old meaning (:data:`SAVED_CONFIG_DEFAULTS`).
    """

    backbone: str = DEFAULT_BACKBONE
    tokenizer: str | None = None
    kind: str = "auto"
    t5_pooling: str = "decoder"
    max_length: int = 96
    truncation_side: str = "left"
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
    item_space: str = "mips"
    head: str = "residual_user"
    id_token_table: bool = True
    seed: int = 0
    inference_precision: str = "auto"

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
        return dataclass_from_dict(cls, values, "llm4rec model")

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> LLM4RecConfig:
        """Build from a saved folder's ``config``: :meth:`from_dict` with :data:`SAVED_CONFIG_DEFAULTS` for the keys
        that folders written before those options existed lack."""
        return cls.from_dict({**SAVED_CONFIG_DEFAULTS, **values})
