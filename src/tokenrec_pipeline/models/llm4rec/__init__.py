"""LLM4Rec: TokenRec's language-model recommender (generative retrieval, Qu et al. 2024).

A prompt written with user/item ID tokens (``user_<u1-128><u2-21><u3-35> ...``) is read by a language
model; one hidden vector ``h`` per prompt is pooled from it, a projection MLP maps it to ``z`` in the
collaborative-filtering space of the item embeddings ``q_j``, and items are scored by ``cos(z, q_j)``
(paper, "Generative Retrieval", steps 2-4). Training uses the paper's pairwise cosine loss::

    L = 1 - cos(z, q_pos)                    for the target item      (lambda = +1)
    L = max(0, cos(z, q_neg) - gamma)        for each sampled negative (lambda = -1)

averaged over all (prompt, item) pairs, which is exactly ``torch.nn.CosineEmbeddingLoss(margin=gamma)``
on the stacked pairs -- what the authors' code calls (with gamma = 0 and one negative per prompt).

Modules, all usable without Kedro (every public name is re-exported here):

* :mod:`~tokenrec_pipeline.models.llm4rec.config` -- :class:`LLM4RecConfig` and the saved folder's file names.
* :mod:`~tokenrec_pipeline.models.llm4rec.model` -- :class:`LLM4Rec` (backbone + :class:`ProjectionHead`);
  inference :meth:`LLM4Rec.encode_prompts`, :meth:`LLM4Rec.save_pretrained`.
* :mod:`~tokenrec_pipeline.models.llm4rec.persistence` -- :func:`build_llm4rec` assembles the model from a
  :class:`LLM4RecConfig`, optionally with LoRA (peft); :func:`load_llm4rec` reads a saved folder.
* :mod:`~tokenrec_pipeline.models.llm4rec.loss` -- :func:`tokenrec_loss`, :func:`softmax_loss`,
  :func:`sample_prompt_negatives`, :func:`padded_history_table`.
* :mod:`~tokenrec_pipeline.models.llm4rec.training` -- :class:`TrainConfig`, :func:`train_llm4rec`.

Shared pieces it builds on, re-exported for existing callers: the backbone
(:mod:`tokenrec_pipeline.models.backbone`: :class:`BackboneAdapter`, :func:`add_recommendation_tokens`,
:func:`enable_lora`, ...), the training engine (:mod:`tokenrec_pipeline.training.engine`: :class:`LoopConfig`,
:class:`TrainResult`, :class:`ProcessGroup`, :func:`run_training_loop`, ...) and the artefact folders
(:mod:`tokenrec_pipeline.core.folders`: :func:`staged_folder`, :func:`read_saved_config`).

Shapes: ``B`` batch, ``L`` sequence length, ``H`` backbone hidden size, ``d`` CF dimension,
``n`` negatives per prompt, ``N`` number of prompts, ``I`` number of items.
"""

from tokenrec_pipeline.core.folders import read_saved_config, staged_folder
from tokenrec_pipeline.core.params import dataclass_from_dict, limit_torch_threads, resolve_device
from tokenrec_pipeline.models.backbone import (
    BACKBONE_KINDS,
    DEFAULT_BACKBONE,
    MINILM_ALIASES,
    BackboneAdapter,
    BackboneKind,
    add_recommendation_tokens,
    default_lora_target_modules,
    detect_backbone_kind,
    enable_lora,
    minilm_model_dir,
    resolve_backbone_path,
)
from tokenrec_pipeline.models.llm4rec.config import (
    BACKBONE_DIR,
    CONFIG_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    HEADS,
    ID_TOKENS_FILE,
    TOKENIZER_DIR,
    USER_DECODER_DIR,
    LLM4RecConfig,
)
from tokenrec_pipeline.models.llm4rec.loss import (
    padded_history_table,
    sample_prompt_negatives,
    softmax_loss,
    tokenrec_loss,
)
from tokenrec_pipeline.models.llm4rec.model import LLM4Rec, ProjectionHead
from tokenrec_pipeline.models.llm4rec.persistence import build_llm4rec, load_llm4rec
from tokenrec_pipeline.models.llm4rec.training import TrainConfig, train_llm4rec
from tokenrec_pipeline.training.engine import (
    LoopConfig,
    ProcessGroup,
    TrainingSetup,
    TrainResult,
    check_global_batch,
    length_bucketed_batches,
    prepare_training,
    run_training_loop,
)

__all__ = [
    "BACKBONE_DIR",
    "BACKBONE_KINDS",
    "CONFIG_FILE",
    "DEFAULT_BACKBONE",
    "FORMAT_VERSION",
    "HEADS",
    "HEAD_FILE",
    "ID_TOKENS_FILE",
    "MINILM_ALIASES",
    "TOKENIZER_DIR",
    "USER_DECODER_DIR",
    "BackboneAdapter",
    "BackboneKind",
    "LLM4Rec",
    "LLM4RecConfig",
    "LoopConfig",
    "ProcessGroup",
    "ProjectionHead",
    "TrainConfig",
    "TrainResult",
    "TrainingSetup",
    "add_recommendation_tokens",
    "build_llm4rec",
    "check_global_batch",
    "dataclass_from_dict",
    "default_lora_target_modules",
    "detect_backbone_kind",
    "enable_lora",
    "length_bucketed_batches",
    "limit_torch_threads",
    "load_llm4rec",
    "minilm_model_dir",
    "padded_history_table",
    "prepare_training",
    "read_saved_config",
    "resolve_backbone_path",
    "resolve_device",
    "run_training_loop",
    "sample_prompt_negatives",
    "softmax_loss",
    "staged_folder",
    "tokenrec_loss",
    "train_llm4rec",
]
