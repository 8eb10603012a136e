"""The autoregressive recommender (:class:`AutoregressiveRecommender`): backbone + item-code decoder,
teacher-forced loss, batched beam search and greedy decoding, saving.

Decoding (:meth:`AutoregressiveRecommender.generate`) is a batched beam search over K steps, sequence score =
sum of per-step log-probabilities, "constrained" (only real items' tuples) or "unconstrained" (invalid tuples
kept and counted), with per-prompt excluded items; see the package docstring of
:mod:`tokenrec_pipeline.models.autoregressive` for the rules and the efficiency notes.

Shapes: ``N`` prompts, ``B`` prompts in a batch, ``W`` beams per prompt, ``S`` prompt length in tokens,
``H`` backbone hidden size, ``D`` head width, ``K`` codebooks (tokens per item), ``L`` codes per codebook,
``I`` items.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from tokenrec_pipeline.core.folders import staged_folder
from tokenrec_pipeline.models.autoregressive.config import (
    BACKBONE_DIR,
    CONFIG_FILE,
    DECODE_MODES,
    FORMAT_VERSION,
    HEAD_FILE,
    TOKENIZER_DIR,
    AutoregressiveConfig,
    DecodeMode,
    DecoderKind,
)
from tokenrec_pipeline.models.autoregressive.generation import NEG_INF, GenerationOutput
from tokenrec_pipeline.models.autoregressive.head import CodeDecoderHead
from tokenrec_pipeline.models.autoregressive.trie import CodeTrie
from tokenrec_pipeline.models.backbone import BackboneAdapter, forward_parameters
from tokenrec_pipeline.models.precision import autocast, inference_precision_of, int8_copy

logger = logging.getLogger(__name__)


def _default_heads(dim: int) -> int:
    """Attention heads of about 64 dimensions each that divide ``dim`` (384 -> 6, 512 -> 8, 32 -> 1)."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def _cache_argument(model: nn.Module) -> str:
    """The name under which this transformers version takes the KV cache (``cache`` since 5.2x)."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


class AutoregressiveRecommender(nn.Module):
    """Backbone + autoregressive item-code decoder, trained with teacher forcing, decoded with beam search.

    Args:
        backbone: :class:`BackboneAdapter` with the ID tokens added; for ``decoder="backbone"`` its model is
            an ``AutoModelForSeq2SeqLM``.
        config: Architecture parameters.
        decoder: "head" or "backbone" (resolved, see :class:`AutoregressiveConfig`).
        new_token_ids: Ids of the added user/item tokens; n_user_tokens, n_item_tokens: their split.
    """

    def __init__(
        self,
        backbone: BackboneAdapter,
        config: AutoregressiveConfig,
        decoder: DecoderKind,
        new_token_ids: Sequence[int] = (),
        n_user_tokens: int = 0,
        n_item_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.decoder_kind: DecoderKind = decoder
        self.new_token_ids = [int(i) for i in new_token_ids]
        self.n_user_tokens, self.n_item_tokens = int(n_user_tokens), int(n_item_tokens)
        k, l = config.n_codebooks, config.codebook_size
        ids = backbone.tokenizer.convert_tokens_to_ids(config.item_tokens())
        if any(i is None or i == backbone.tokenizer.unk_token_id for i in ids):
            raise ValueError("The item tokens are not in the tokenizer; build the model with build_autoregressive.")
        # (K, L) vocabulary ids of <i{k}-{c}>: what the seq2seq decoder reads and emits.
        self.register_buffer("code_token_ids", torch.tensor(ids, dtype=torch.long).view(k, l), persistent=False)
        self.head: CodeDecoderHead | None = None
        if decoder == "head":
            dim = config.head_dim or backbone.hidden_size
            heads = config.head_heads or _default_heads(dim)
            self.head = CodeDecoderHead(
                backbone.hidden_size, k, l, dim, heads, config.head_ff_dim or 4 * dim, config.head_layers,
                config.head_dropout,
            )
        self.to(backbone.device)

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def n_codebooks(self) -> int:
        return self.config.n_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    # -- encoding ----------------------------------------------------------------------------------------------

    def _memory(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Per-token prompt states for the head: (B, S) -> (B, S, D)."""
        base = self.backbone.base_model
        kind = self.backbone.kind
        if kind == "encoder_decoder":
            hidden = base.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        elif kind == "decoder":
            extra: dict[str, Any] = {}
            arguments = forward_parameters(base)
            if "use_cache" in arguments:
                extra["use_cache"] = False
            if "position_ids" in arguments:  # count real tokens only, so left padding is harmless
                extra["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = base(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        else:
            hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        assert self.head is not None
        return self.head.memory_proj(hidden.to(self.head.memory_proj.weight.dtype))

    def code_logits(self, input_ids: Tensor, attention_mask: Tensor, target_codes: Tensor) -> Tensor:
        """Teacher-forced logits of every code position.

        Args:
            input_ids, attention_mask: (B, S) tokenised prompts.
            target_codes: (B, K) target tuples.

        Returns:
            (B, K, L) float32 logits; position k is codebook k given the target's first k codes.
        """
        if self.head is not None:
            memory = self._memory(input_ids, attention_mask)
            return self.head(memory, attention_mask, target_codes).float()
        model = self.backbone.model
        steps = torch.arange(self.n_codebooks, device=target_codes.device)
        tokens = self.code_token_ids[steps, target_codes]  # (B, K)
        start = torch.full_like(tokens[:, :1], self.backbone.decoder_start_token_id())
        decoder_input_ids = torch.cat([start, tokens[:, :-1]], dim=1)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits  # (B, K, V)
        allowed = self.code_token_ids.unsqueeze(0).expand(logits.shape[0], -1, -1)
        return logits.gather(2, allowed).float()

    def loss(
        self, input_ids: Tensor, attention_mask: Tensor, target_codes: Tensor, label_smoothing: float = 0.0
    ) -> Tensor:
        """Mean cross-entropy over the K code positions (scalar)."""
        logits = self.code_logits(input_ids, attention_mask, target_codes)
        return F.cross_entropy(
            logits.reshape(-1, self.codebook_size), target_codes.reshape(-1), label_smoothing=label_smoothing
        )

    # -- incremental decoding (both decoders behind one interface) ---------------------------------------------

    def _start(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Any]:
        """Encode a batch of prompts once; returns the decoding state with one beam (BOS) per prompt."""
        if self.head is not None:
            return self.head.start(self._memory(input_ids, attention_mask), attention_mask)
        model = self.backbone.model
        encoder_states = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return {
            "encoder_states": encoder_states,
            "mask": attention_mask,
            "prompt_of_row": torch.arange(input_ids.shape[0], device=input_ids.device),
            "cache": None,
            "width": 1,
        }

    def _step(self, state: dict[str, Any], level: int, previous: Tensor | None) -> Tensor:
        """(B*W, L) logits of codebook ``level`` for every beam."""
        if self.head is not None:
            return self.head.step(state, level, previous)
        model = self.backbone.model
        rows = state["prompt_of_row"]
        if previous is None:
            tokens = torch.full((rows.shape[0], 1), self.backbone.decoder_start_token_id(), device=rows.device)
        else:
            tokens = self.code_token_ids[level - 1][previous].unsqueeze(1)
        arguments: dict[str, Any] = {"use_cache": True}
        if state["cache"] is not None:
            arguments[_cache_argument(model)] = state["cache"]
        output = model(
            encoder_outputs=(state["encoder_states"][rows],),
            attention_mask=state["mask"][rows],
            decoder_input_ids=tokens,
            **arguments,
        )
        state["cache"] = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        return output.logits[:, -1].gather(1, self.code_token_ids[level].unsqueeze(0).expand(tokens.shape[0], -1))

    def _reorder(self, state: dict[str, Any], parent_rows: Tensor, width: int) -> None:
        """Keep the states of the surviving beams; ``parent_rows`` (B*W_new,) indexes the old rows."""
        if self.head is not None:
            self.head.reorder(state, parent_rows, width)
            return
        state["cache"].reorder_cache(parent_rows)
        state["prompt_of_row"] = state["prompt_of_row"][parent_rows]
        state["width"] = width

    # -- beam search -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _beam_search_batch(
        self,
        batch: dict[str, Tensor],
        trie: CodeTrie,
        beam_size: int,
        num_return: int,
        constrained: bool,
        dead: Mapping[int, Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Beam search for B prompts.

        Args:
            batch: Tokenised prompts ((B, S) ids and mask) on the model device.
            trie: On the model device.
            beam_size: W.
            num_return: Tuples kept per prompt (<= W).
            constrained: Mask codes that leave the trie.
            dead: ``{depth: (B, F) node ids}`` the beams must not enter (excluded items, see :meth:`_dead_nodes`).

        Returns:
            ``(codes (B, num_return, K), scores (B, num_return), leaves (B, num_return))`` on the device.
        """
        b = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        l, k_total = self.codebook_size, self.n_codebooks
        state = self._start(batch["input_ids"], batch["attention_mask"])
        scores = torch.zeros(b, 1, device=device)
        nodes = torch.zeros(b, dtype=torch.long, device=device)  # trie node of each beam (-1: left the trie)
        codes = torch.zeros(b, 1, 0, dtype=torch.long, device=device)
        previous: Tensor | None = None
        width = 1
        batch_rows = torch.arange(b, device=device)
        for level in range(k_total):
            logits = self._step(state, level, previous).float()  # (B*W, L)
            children = trie.children(level, nodes)  # (B*W, L)
            blocked = children < 0 if constrained else torch.zeros_like(children, dtype=torch.bool)
            if level + 1 in dead:
                blocked = blocked | self._blocked_children(trie, level, nodes, dead[level + 1], width)
            logits = logits.masked_fill(blocked, NEG_INF)
            log_probs = torch.log_softmax(logits, dim=-1)
            # A row with every code blocked (a dead or padding beam) gives NaN; it has no continuation. (Not
            # nan_to_num: it would also turn -inf into the lowest finite float, reviving blocked codes.)
            log_probs = log_probs.masked_fill(torch.isnan(log_probs), NEG_INF)
            total = (scores.unsqueeze(-1) + log_probs.view(b, width, l)).view(b, width * l)
            new_width = min(beam_size, width * l)
            scores, flat = total.topk(new_width, dim=1)  # sorted, best first
            parent_beam, chosen = flat // l, flat % l
            parent_rows = (batch_rows.unsqueeze(1) * width + parent_beam).view(-1)
            nodes = children.view(b, width, l)[batch_rows.unsqueeze(1), parent_beam, chosen].view(-1)
            codes = torch.cat([codes[batch_rows.unsqueeze(1), parent_beam], chosen.unsqueeze(-1)], dim=2)
            previous = chosen.view(-1)
            width = new_width
            if level < k_total - 1:
                self._reorder(state, parent_rows, width)
        scores, codes, nodes = scores[:, :num_return], codes[:, :num_return], nodes.view(b, width)[:, :num_return]
        empty = torch.isneginf(scores)
        codes = codes.masked_fill(empty.unsqueeze(-1), -1)
        leaves = nodes.masked_fill(empty, -1)
        return codes, scores, leaves

    @staticmethod
    def _blocked_children(trie: CodeTrie, level: int, nodes: Tensor, dead: Tensor, width: int) -> Tensor:
        """(B*W, L) True where a beam's next code would lead to a dead node of its prompt.

        A depth-(k+1) node is fixed by its depth-k parent and its code, so a beam is affected only when its node
        equals a dead node's parent: a (B, W, F) comparison instead of looking up all B*W*L candidates.

        Args:
            level: Step k; ``nodes`` (B*W,) are the beams' depth-k nodes.
            dead: (B, F) depth-(k+1) node ids per prompt, -1 padded.
        """
        b = dead.shape[0]
        key = trie.keys[level][dead.clamp(min=0)]
        parent, code = key // trie.codebook_size, key % trie.codebook_size
        parent = parent.masked_fill(dead < 0, -2)  # -2 never equals a node id (dead beams are -1)
        hits = nodes.view(b, width, 1) == parent.unsqueeze(1)  # (B, W, F)
        prompt, beam, slot = torch.nonzero(hits, as_tuple=True)
        mask = torch.zeros(b * width, trie.codebook_size, dtype=torch.bool, device=nodes.device)
        mask[prompt * width + beam, code[prompt, slot]] = True
        return mask

    def _dead_nodes(
        self, trie: CodeTrie, exclude: Sequence[Sequence[int]], rows: Sequence[int], prune_prefixes: bool
    ) -> dict[int, Tensor]:
        """Per depth, the nodes each prompt must not enter because of its excluded items.

        A leaf is dead when all of its items are excluded (a tuple shared with another item stays: that item is
        still a recommendation). With ``prune_prefixes`` (constrained mode) a shorter prefix is dead too when all
        of its children are, so no beam walks into a subtree that can only end in excluded items -- otherwise a
        beam whose single completion is a history item would die at the last step and leave its slot empty.
        Unconstrained decoding blocks only the excluded tuples themselves.

        Returns:
            ``{depth: (B, F) node ids, -1 padded}`` for the depths (1..K) that have any dead node.
        """
        k_total = trie.n_codebooks
        leaf_indptr = trie.leaf_indptr.cpu().numpy()
        item_leaf = trie.item_leaf.cpu().numpy()
        keys = [t.cpu().numpy() for t in trie.keys]
        indptr = [t.cpu().numpy() for t in trie.indptr]
        per_depth: dict[int, list[np.ndarray]] = {depth: [] for depth in range(1, k_total + 1)}
        for row in rows:
            items = np.unique(np.asarray(list(exclude[row]), dtype=np.int64))
            items = items[(items >= 0) & (items < trie.n_items)]
            leaves, counts = np.unique(item_leaf[items], return_counts=True)
            dead = leaves[counts == leaf_indptr[leaves + 1] - leaf_indptr[leaves]]
            per_depth[k_total].append(dead)
            for depth in range(k_total - 1, 0, -1):
                if prune_prefixes and dead.size:
                    parents, n_dead = np.unique(keys[depth][dead] // trie.codebook_size, return_counts=True)
                    dead = parents[n_dead == indptr[depth][parents + 1] - indptr[depth][parents]]
                else:
                    dead = dead[:0]
                per_depth[depth].append(dead)
        tables: dict[int, Tensor] = {}
        for depth, lists in per_depth.items():
            width = max((len(d) for d in lists), default=0)
            if width:
                table = np.full((len(lists), width), -1, dtype=np.int64)
                for index, nodes in enumerate(lists):
                    table[index, : len(nodes)] = nodes
                tables[depth] = torch.from_numpy(table).to(self.device)
        return tables

    def generate(
        self,
        prompts: Sequence[str],
        trie: CodeTrie,
        beam_size: int = 20,
        num_return: int | None = None,
        mode: DecodeMode = "constrained",
        exclude: Sequence[Sequence[int]] | None = None,
        batch_size: int = 64,
        show_progress: bool = False,
        precision: str | None = None,
    ) -> GenerationOutput:
        """Beam-search the top tuples for each prompt (eval mode, no gradients).

        Args:
            prompts: N prompt strings.
            trie: :class:`CodeTrie` of the item code table (moved to the model device if needed).
            beam_size: W; ``beam_size=1`` is greedy decoding.
            num_return: Tuples returned per prompt (default W, at most W).
            mode: "constrained" (only real items) or "unconstrained" (any tuple; invalid ones counted).
            exclude: Optional per-prompt item ids (the history) never to complete.
            batch_size: Prompts per batch (sorted by length to limit padding; results in input order).
            show_progress: tqdm bar over batches.
            precision: "auto" | "fp32" | "bf16" | "fp16" | "int8"; ``None``: ``config.inference_precision``.

        Returns:
            :class:`GenerationOutput` with N rows.
        """
        if mode not in DECODE_MODES:
            raise ValueError(f"mode must be one of {DECODE_MODES}, got {mode!r}.")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
        if (trie.n_codebooks, trie.codebook_size) != (self.n_codebooks, self.codebook_size):
            raise ValueError(
                f"The code table has K={trie.n_codebooks}, L={trie.codebook_size}; the model was built for "
                f"K={self.n_codebooks}, L={self.codebook_size}."
            )
        num_return = min(num_return or beam_size, beam_size)
        prompts = list(prompts)
        if exclude is not None and len(exclude) != len(prompts):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(prompts)} prompts.")
        if trie.device != self.device:
            trie.to(self.device)
        started = time.perf_counter()
        n = len(prompts)
        out_codes = np.full((n, num_return, self.n_codebooks), -1, dtype=np.int64)
        out_scores = np.full((n, num_return), NEG_INF, dtype=np.float32)
        out_leaves = np.full((n, num_return), -1, dtype=np.int64)
        order = sorted(range(n), key=lambda i: len(prompts[i]))
        resolved = inference_precision_of(self.config.inference_precision, precision, self.device,
                                          "autoregressive.model.inference_precision")
        model = int8_copy(self) if resolved == "int8" else self
        was_training = self.training
        self.eval()
        try:
            for start in tqdm(range(0, n, batch_size), disable=not show_progress, desc="beam search"):
                rows = order[start : start + batch_size]
                batch = self.backbone.tokenize([prompts[i] for i in rows])
                dead = {} if exclude is None else self._dead_nodes(trie, exclude, rows, mode == "constrained")
                with autocast(self.device, resolved):
                    codes, scores, leaves = model._beam_search_batch(
                        batch, trie, beam_size, num_return, mode == "constrained", dead
                    )
                width = scores.shape[1]  # < num_return only when L^K is smaller than the beam
                out_codes[rows, :width] = codes.cpu().numpy()
                out_scores[rows, :width] = scores.float().cpu().numpy()
                out_leaves[rows, :width] = leaves.cpu().numpy()
        finally:
            self.train(was_training)
        output = GenerationOutput(out_codes, out_scores, out_leaves, mode, beam_size, time.perf_counter() - started)
        if output.n_invalid:
            logger.info(
                "%s beam search (W=%d): %d of %d generated tuples are no item's (invalid rate %.3f).",
                mode, beam_size, output.n_invalid, output.n_generated, output.invalid_rate,
            )
        return output

    @torch.no_grad()
    def greedy(
        self, prompts: Sequence[str], trie: CodeTrie, mode: DecodeMode = "constrained", batch_size: int = 64
    ) -> GenerationOutput:
        """Greedy decoding (argmax per step), written independently of the beam search as a reference.

        Returns:
            :class:`GenerationOutput` with one tuple per prompt.
        """
        prompts = list(prompts)
        if trie.device != self.device:
            trie.to(self.device)
        was_training = self.training
        self.eval()
        codes_out, scores_out, leaves_out = [], [], []
        try:
            for start in range(0, len(prompts), batch_size):
                batch = self.backbone.tokenize(prompts[start : start + batch_size])
                state = self._start(batch["input_ids"], batch["attention_mask"])
                b = batch["input_ids"].shape[0]
                nodes = torch.zeros(b, dtype=torch.long, device=self.device)
                score = torch.zeros(b, device=self.device)
                chosen: list[Tensor] = []
                previous: Tensor | None = None
                for level in range(self.n_codebooks):
                    logits = self._step(state, level, previous).float()
                    children = trie.children(level, nodes)
                    if mode == "constrained":
                        logits = logits.masked_fill(children < 0, NEG_INF)
                    log_probs = torch.log_softmax(logits, dim=-1)
                    previous = log_probs.argmax(dim=-1)
                    score = score + log_probs.gather(1, previous.unsqueeze(1)).squeeze(1)
                    nodes = children.gather(1, previous.unsqueeze(1)).squeeze(1)
                    chosen.append(previous)
                codes_out.append(torch.stack(chosen, dim=1).cpu())
                scores_out.append(score.cpu())
                leaves_out.append(nodes.cpu())
        finally:
            self.train(was_training)
        return GenerationOutput(
            torch.cat(codes_out).unsqueeze(1).numpy(),
            torch.cat(scores_out).unsqueeze(1).numpy().astype(np.float32),
            torch.cat(leaves_out).unsqueeze(1).numpy(),
            mode,
            1,
        )

    # -- persistence -------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike[str]) -> None:
        """Write ``autoregressive_config.json``, ``tokenizer/``, ``backbone/`` (``save_pretrained``) and, for the
        head decoder, ``decoder_head.safetensors``; staged in a sibling folder and renamed into place."""
        refusal = "is not an autoregressive model folder; refusing to overwrite."
        with staged_folder(folder, CONFIG_FILE, refusal) as staging:
            self.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
            self.backbone.model.save_pretrained(staging / BACKBONE_DIR)
            if self.head is not None:
                state = {name: t.detach().cpu().contiguous() for name, t in self.head.state_dict().items()}
                save_file(state, str(staging / HEAD_FILE))
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": self.backbone.kind,
                "decoder": self.decoder_kind,
                "hidden_size": self.backbone.hidden_size,
                "new_token_ids": self.new_token_ids,
                "n_user_tokens": self.n_user_tokens,
                "n_item_tokens": self.n_item_tokens,
            }
            (staging / CONFIG_FILE).write_text(json.dumps({"config": asdict(self.config), "state": meta}, indent=2))
