"""Language-model backbones shared by LLM4Rec and the autoregressive baseline.

* :mod:`~tokenrec_pipeline.models.backbone.loading` -- locating checkpoints (hub id, local folder, the packaged
  all-MiniLM-L6-v2), telling encoder / encoder-decoder / decoder apart, weight dtypes, resizing embeddings.
* :mod:`~tokenrec_pipeline.models.backbone.adapter` -- :class:`BackboneAdapter`: model + tokenizer pooled to
  one vector per prompt.
* :mod:`~tokenrec_pipeline.models.backbone.vocabulary` -- :func:`add_recommendation_tokens`: the user/item
  ID tokens added to the tokenizer and the embedding matrix.
* :mod:`~tokenrec_pipeline.models.backbone.lora` -- peft/LoRA glue (:func:`enable_lora`).
"""

from tokenrec_pipeline.models.backbone.adapter import BackboneAdapter, forward_parameters
from tokenrec_pipeline.models.backbone.loading import (
    BACKBONE_KINDS,
    DEFAULT_BACKBONE,
    MINILM_ALIASES,
    BackboneKind,
    detect_backbone_kind,
    from_pretrained_dtype,
    grow_embeddings,
    minilm_model_dir,
    resolve_backbone_path,
)
from tokenrec_pipeline.models.backbone.lora import default_lora_target_modules, enable_lora, retie_embedding_copies
from tokenrec_pipeline.models.backbone.vocabulary import add_recommendation_tokens

__all__ = [
    "BACKBONE_KINDS",
    "DEFAULT_BACKBONE",
    "MINILM_ALIASES",
    "BackboneAdapter",
    "BackboneKind",
    "add_recommendation_tokens",
    "default_lora_target_modules",
    "detect_backbone_kind",
    "enable_lora",
    "forward_parameters",
    "grow_embeddings",
    "minilm_model_dir",
    "resolve_backbone_path",
    "retie_embedding_copies",
    "from_pretrained_dtype",
]
