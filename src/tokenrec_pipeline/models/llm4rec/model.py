"""The LLM4Rec model: backbone adapter + projection head, prompt -> z in the item embedding space.

:class:`LLM4Rec` pools one hidden vector ``h`` per prompt with its
:class:`~tokenrec_pipeline.models.backbone.BackboneAdapter`, and :class:`ProjectionHead` maps it to ``z`` in the
collaborative-filtering space of the item embeddings (paper, "Generative Retrieval", steps 2-4). Inference is
:meth:`LLM4Rec.encode_prompts`; :meth:`LLM4Rec.save_pretrained` writes the model folder that
:func:`~tokenrec_pipeline.models.llm4rec.persistence.load_llm4rec` reads.

Shapes: ``B`` batch, ``L`` sequence length, ``H`` backbone hidden size, ``d`` CF dimension, ``N`` prompts,
``I`` items.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from tokenrec_pipeline.core.folders import staged_folder
from tokenrec_pipeline.models.backbone import BackboneAdapter
from tokenrec_pipeline.models.id_tokens import IdTokenEmbeddings, UserCodeDecoder
from tokenrec_pipeline.models.item_space import items_to_space, queries_to_space, space_dim
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
from tokenrec_pipeline.models.precision import autocast, inference_precision_of, int8_copy
from tokenrec_pipeline.models.tokenizers import FittedTokenizer


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
        return inference_precision_of(self.config.inference_precision, precision, self.device,
                                      "llm4rec.model.inference_precision")

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
