"""Sequential baselines: SASRec (Kang & McAuley 2018) and BERT4Rec (Sun et al. 2019).

Under this project's protocol sequential models are the strongest peers (``docs/BENCHMARKS.md``), so the
report puts them beside Pop, MF, LightGCN and TokenRec, trained and scored on the same splits by the
same evaluator (:mod:`tokenrec_pipeline.evaluation.ranking`): history items excluded with ``-inf``,
early stopping on the seen users' validation NDCG@20, test computed once at the selected epoch.

* **SASRec**: item + learned position embeddings, a causal ``torch.nn.TransformerEncoder`` (a
  position attends to itself and earlier items only), the next item predicted at every position by
  a dot product with the (tied) item embeddings; loss = cross-entropy over all items, or a sampled
  softmax over ``num_negatives`` uniform negatives shared by the batch (``loss: sampled_softmax``).
* **BERT4Rec**: the same encoder without the causal mask; training replaces a random ``mask_prob``
  share of the items (at least one per sequence) by a ``[mask]`` token and predicts only those
  positions (the cross-entropy is computed on the masked rows alone); at prediction time the
  ``[mask]`` token is appended after the history and its output scores the next item.

Sequences are left-padded (token 0 = padding, item ``i`` is token ``i + 1``), so the most recent
item always sits at the last position and the position embeddings count recency. Each user's TRAIN
sequence (chronological: the row order of ``interactions_split``) is cut, from its end backwards,
into windows of ``max_length`` (+1 for SASRec's shifted targets), so every training transition is
seen exactly once per epoch however long the history is. Unseen users are scored from their
``unseen_history`` alone with the trained weights: no retraining, no user embedding.

Libraries checked before writing this (PyPI, 2026-11):

* RecBole 1.2.1 has both models but is a whole framework (its own config, dataset and trainer
  classes), pins ``colorlog==4.7.2``, ``colorama==0.4.4`` and ``ray<=2.6.3``, pulls tensorboard and
  thop, saves pickled checkpoints, and does not exclude history items when ranking for sequential
  models; its last release is from 2025-02. docs/BENCHMARKS.md's reference rows come from it, outside
  this project.
* replay-rec 0.22.0 (SASRec and BERT4Rec on Lightning) requires ``pandas<3`` and ``pyarrow<24``;
  this project runs pandas 3.1 and pyarrow 25.
* Transformers4Rec 23.12 (last release 2024-01) needs the NVIDIA Merlin stack.
* torch-rechub 0.9.0 has a SASRec retrieval model with its own data generators and no BERT4Rec.

So the models are ~200 lines on ``torch.nn.TransformerEncoder``, the evaluator is the project's own.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenrec_pipeline.core.params import dataclass_from_dict, resolve_device
from tokenrec_pipeline.evaluation.ranking import (
    DEFAULT_KS,
    EvalInputs,
    GroupSpec,
    Histories,
    RankingResult,
    ScoreFn,
    eval_inputs_from_splits,
    evaluate_inputs,
    evaluate_user_groups,
    histories_to_csr,
    split_sizes,
)
from tokenrec_pipeline.training.loop import EarlyStopping, fit_epochs, valid_metrics

logger = logging.getLogger(__name__)

PAD = 0
"""Padding token; item ``i`` is token ``i + 1``."""

SELECTION_METRIC = "NDCG@20"
SequentialModelName = Literal["sasrec", "bert4rec"]


@dataclass
class SequentialConfig:
    """Hyper-parameters of SASRec / BERT4Rec (defaults = ``baselines.sasrec`` / ``baselines.bert4rec`` of
    ``conf/base/parameters_baselines.yml``, kept in step by ``tests/test_parameter_defaults.py``: hidden 64,
    2 layers, 2 heads, max length 50; RecBole's dropout 0.5 / lr 0.001 / batch 256 trained slower here)."""

    model: SequentialModelName = "sasrec"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256
    """Width of the feed-forward block of each transformer layer."""
    max_length: int = 50
    """Most recent items the model reads (BERT4Rec: including the appended ``[mask]``)."""
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.0
    epochs: int = 200
    patience: int = 10
    """Validations without a better validation NDCG@20 before stopping."""
    batch_size: int = 64
    loss: Literal["ce", "sampled_softmax"] = "ce"
    """``ce``: softmax over all items; ``sampled_softmax``: over the target + ``num_negatives`` uniform items."""
    num_negatives: int = 100
    mask_prob: float = 0.2
    """BERT4Rec: share of items replaced by ``[mask]`` in training."""
    eval_every: int = 1
    max_train_seconds: float | None = None
    """Stop after the first epoch that ends past this many seconds (``None``: no cap); the best
    validation epoch so far is kept, as with early stopping."""
    eval_ks: tuple[int, ...] = DEFAULT_KS
    eval_batch_size: int = 512
    seed: int = 0
    device: str | None = "auto"
    """``"auto"`` (or ``None``): CUDA when available."""
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in ("sasrec", "bert4rec"):
            raise ValueError(f"sequential model must be 'sasrec' or 'bert4rec', got {self.model!r}.")
        if self.loss not in ("ce", "sampled_softmax"):
            raise ValueError(f"{self.model}.loss must be 'ce' or 'sampled_softmax', got {self.loss!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{self.model}.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}.")
        if min(self.epochs, self.batch_size, self.eval_every, self.patience, self.num_negatives) < 1:
            raise ValueError(f"{self.model}: epochs, batch_size, eval_every, patience and num_negatives must be >= 1.")
        if self.max_length < 2:
            raise ValueError(f"{self.model}.max_length={self.max_length} must be >= 2.")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"{self.model}.mask_prob={self.mask_prob} must lie in (0, 1).")
        self.eval_ks = tuple(int(k) for k in self.eval_ks)
        if 20 not in self.eval_ks:
            raise ValueError(f"eval_ks must contain 20 (early stopping uses {SELECTION_METRIC}), got {self.eval_ks}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SequentialConfig:
        """Build from a parameters mapping (``baselines.sasrec``, ``baselines.bert4rec``), rejecting unknown keys."""
        return dataclass_from_dict(cls, values, "sequential model")


# ----------------------------------------------------------------------------------------------
# Sequences -> padded token tensors
# ----------------------------------------------------------------------------------------------


def left_padded_item_tokens(histories: Histories, n_rows: int, length: int) -> Tensor:
    """``(n_rows, length)`` tokens: each history's last ``length`` items as tokens (item + 1), left-padded with 0."""
    indptr, indices = histories_to_csr(histories, n_rows)
    lengths = np.minimum(np.diff(indptr), length)
    out = np.zeros((n_rows, length), dtype=np.int64)
    rows = np.repeat(np.arange(n_rows), lengths)
    # Element j (0-based from the end) of a row goes to column length-1-j.
    from_end = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = np.repeat(indptr[1:], lengths) - 1 - from_end
    out[rows, length - 1 - from_end] = indices[src] + 1
    return torch.from_numpy(out)


def trim_left_padding(tokens: Tensor, min_length: int = 1) -> Tensor:
    """Drop the leading columns that are padding in every row (keeping at least ``min_length``).

    Exact for left-padded input: positions are counted from the right and padding is never attended
    to, so real positions get the same outputs; short-sequence batches (e.g. Amazon data, median
    history ~6 items under ``max_length`` 50) then cost a fraction of the full width.
    """
    real = (tokens != PAD).any(dim=0)
    first = int(real.to(torch.int8).argmax()) if bool(real.any()) else tokens.shape[1]
    return tokens[:, min(first, tokens.shape[1] - min_length):]


def training_windows(sequences: Histories, n_rows: int, window: int, step: int | None = None) -> Tensor:
    """Cut every sequence, from its end backwards, into windows of ``window`` items whose ends are
    ``step`` apart (default ``window``: no overlap), left-padded: ``(n_windows, window)`` tokens.

    SASRec uses ``window = max_length + 1`` and ``step = max_length``: consecutive windows share one
    item, so every transition (a, b) lies in exactly one window. Sequences shorter than 2 items give
    no window."""
    step = step or window
    indptr, indices = histories_to_csr(sequences, n_rows)
    out: list[np.ndarray] = []
    for r in range(n_rows):
        seq = indices[indptr[r] : indptr[r + 1]] + 1
        for end in range(len(seq), 1, -step):
            part = seq[max(0, end - window) : end]
            if len(part) >= 2:
                out.append(np.pad(part, (window - len(part), 0)))
    if not out:
        raise ValueError("no training sequence has 2 or more items; sequential models need at least one transition.")
    return torch.from_numpy(np.stack(out))


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class _TransformerRecommender(nn.Module):
    """Item + position embeddings -> LayerNorm -> dropout -> TransformerEncoder; scores = hidden @ item_emb."""

    causal: bool = False
    n_special_tokens: int = 1  # padding

    def __init__(self, n_items: int, config: SequentialConfig) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_length = config.max_length
        self.num_heads = config.num_heads
        self.item_embedding = nn.Embedding(n_items + self.n_special_tokens, config.hidden_size, padding_idx=PAD)
        self.position_embedding = nn.Embedding(config.max_length, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size, config.num_heads, config.inner_size, config.dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT / RecBole initialisation: N(0, 0.02) embeddings and linear weights.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def attention_mask(self, tokens: Tensor) -> Tensor:
        """``(B * heads, L, L)`` boolean mask, True = may not attend: padding keys (and, if causal,
        later positions). A position may always attend to itself, so no row is fully masked."""
        length = tokens.shape[1]
        blocked = (tokens == PAD).unsqueeze(1).expand(-1, length, -1)
        if self.causal:
            later = torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)
            blocked = blocked | later
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=tokens.device)
        return blocked.repeat_interleave(self.num_heads, dim=0)

    def forward(self, tokens: Tensor) -> Tensor:
        """Hidden states ``(B, L, hidden)`` of left-padded ``tokens`` ``(B, L)``, ``L <= max_length``."""
        if tokens.shape[1] > self.max_length:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_length={self.max_length}.")
        positions = torch.arange(self.max_length - tokens.shape[1], self.max_length, device=tokens.device)
        x = self.item_embedding(tokens) + self.position_embedding(positions).unsqueeze(0)
        x = self.dropout(self.layer_norm(x))
        return self.encoder(x, mask=self.attention_mask(tokens))

    @property
    def item_weights(self) -> Tensor:
        """Output embeddings of the real items ``(n_items, hidden)`` (tied with the input embeddings)."""
        return self.item_embedding.weight[1 : self.n_items + 1]

    def loss(self, hidden: Tensor, targets: Tensor, loss: str = "ce", negatives: Tensor | None = None) -> Tensor:
        """Softmax loss of ``hidden`` rows ``(N, hidden)`` against item ids ``targets`` ``(N,)``:
        over all items (``ce``) or over target + shared ``negatives`` (``sampled_softmax``)."""
        if loss == "ce":
            return F.cross_entropy(hidden @ self.item_weights.T, targets)
        if negatives is None:
            raise ValueError("sampled_softmax needs negatives.")
        weights = self.item_weights
        positive = (hidden * weights[targets]).sum(-1, keepdim=True)
        negative = hidden @ weights[negatives].T
        negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        logits = torch.cat([positive, negative], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))

    def prediction_tokens(self, histories: Histories, n_rows: int) -> Tensor:
        """Left-padded input tokens that :meth:`predict` scores (subclasses decide the layout)."""
        raise NotImplementedError

    def predict(self, tokens: Tensor) -> Tensor:
        """Scores ``(B, n_items)`` of the next item from :meth:`prediction_tokens` rows."""
        return self(trim_left_padding(tokens))[:, -1] @ self.item_weights.T


class SASRec(_TransformerRecommender):
    """Self-attentive sequential recommendation: causal attention, next item at every position."""

    causal = True

    def training_loss(self, window: Tensor, loss: str = "ce", negatives: Tensor | None = None) -> Tensor:
        """Next-item loss over the non-padding positions of ``window`` ``(B, max_length + 1)``:
        inputs ``window[:, :-1]``, targets ``window[:, 1:]``."""
        inputs, targets = window[:, :-1], window[:, 1:]
        hidden = self(inputs)
        keep = (targets != PAD) & (inputs != PAD)
        return self.loss(hidden[keep], targets[keep] - 1, loss, negatives)

    def prediction_tokens(self, histories: Histories, n_rows: int) -> Tensor:
        return left_padded_item_tokens(histories, n_rows, self.max_length)


class BERT4Rec(_TransformerRecommender):
    """Bidirectional masked-item model; the ``[mask]`` token is ``n_items + 1``."""

    causal = False
    n_special_tokens = 2  # padding + [mask]

    @property
    def mask_token(self) -> int:
        return self.n_items + 1

    def mask_items(self, window: Tensor, mask_prob: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Replace a random ``mask_prob`` share of the items (>= 1 per row) by ``[mask]``.

        Returns ``(inputs, labels)``: ``labels`` holds the original token at masked positions and
        ``PAD`` everywhere else (those positions are not scored).
        """
        real = window != PAD
        draw = torch.rand(window.shape, generator=generator).to(window.device)
        masked = (draw < mask_prob) & real
        # A row with no masked item would teach nothing: mask its most recent item instead.
        empty = ~masked.any(dim=1)
        masked[empty, -1] = real[empty, -1]
        inputs = window.masked_fill(masked, self.mask_token)
        labels = window.masked_fill(~masked, PAD)
        return inputs, labels

    def training_loss(self, inputs: Tensor, labels: Tensor, loss: str = "ce",
                      negatives: Tensor | None = None) -> Tensor:
        """Loss on the masked positions only (``labels != PAD``); the other positions are never scored."""
        hidden = self(inputs)
        keep = labels != PAD
        return self.loss(hidden[keep], labels[keep] - 1, loss, negatives)

    def prediction_tokens(self, histories: Histories, n_rows: int) -> Tensor:
        tokens = left_padded_item_tokens(histories, n_rows, self.max_length - 1)
        mask = torch.full((n_rows, 1), self.mask_token, dtype=torch.long)
        return torch.cat([tokens, mask], dim=1)


def build_sequential_model(config: SequentialConfig, n_items: int) -> SASRec | BERT4Rec:
    """The module named by ``config.model``, seeded by ``config.seed``."""
    torch.manual_seed(config.seed)
    return (SASRec if config.model == "sasrec" else BERT4Rec)(n_items, config)


# ----------------------------------------------------------------------------------------------
# Scoring and training
# ----------------------------------------------------------------------------------------------


def sequential_score_fn(model: _TransformerRecommender, inputs: EvalInputs,
                        device: torch.device | None = None) -> ScoreFn:
    """Evaluator score function: scores each user in ``inputs`` from its history (the same CSR the
    evaluator excludes), so seen and unseen users alike are scored without retraining."""
    users = np.asarray(inputs.users)
    if len(np.unique(users)) != len(users):
        raise ValueError("sequential scoring needs one row per user in EvalInputs.")
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    tokens = model.prediction_tokens(inputs.histories, len(inputs))
    device = device or next(model.parameters()).device

    def score_fn(user_ids: Tensor) -> Tensor:
        ids = user_ids.cpu().numpy()
        rows = order[np.searchsorted(sorted_users, ids)]
        model.eval()
        with torch.no_grad():
            return model.predict(tokens[torch.from_numpy(rows)].to(device))

    return score_fn


@dataclass
class SequentialResult:
    """A trained SASRec / BERT4Rec at its best validation epoch (eval mode) and its training record.

    ``history``: one row per epoch with ``epoch``, ``loss`` and ``valid_<metric>`` (NaN on epochs
    without validation).
    """

    model: _TransformerRecommender
    config: SequentialConfig
    best_epoch: int
    epochs_run: int
    history: pd.DataFrame
    best_valid_metrics: dict[str, float]
    fit_seconds: float

    @property
    def params(self) -> dict:
        return {f"{self.config.model}.{k}": v for k, v in asdict(self.config).items()}


def train_sequences_from_splits(interactions_split: pd.DataFrame) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """Every seen user's TRAIN items in chronological (row) order as CSR, and the number of items."""
    sizes = split_sizes(interactions_split)
    train = interactions_split[interactions_split["split"].to_numpy() == "train"]
    users = train["user_id"].to_numpy(dtype=np.int64)
    items = train["item_id"].to_numpy(dtype=np.int64)
    order = np.argsort(users, kind="stable")  # keeps each user's chronological row order
    indptr = np.zeros(sizes.n_seen_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=sizes.n_seen_users), out=indptr[1:])
    return (indptr, items[order]), sizes.n_items


def train_sequential(
    sequences: Histories,
    n_items: int,
    config: SequentialConfig,
    valid: EvalInputs | None = None,
) -> SequentialResult:
    """Train SASRec / BERT4Rec on the training ``sequences`` (one chronological item array per user,
    or CSR), keep the epoch with the best validation NDCG@20 on ``valid`` (early stopping after
    ``patience`` validations without improvement); without ``valid``, the last epoch."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    n_rows = len(sequences[0]) - 1 if isinstance(sequences, tuple) else len(sequences)
    model = build_sequential_model(config, n_items).to(device)
    if config.model == "sasrec":  # inputs window[:-1], next-item targets window[1:]
        windows = training_windows(sequences, n_rows, config.max_length + 1, config.max_length)
    else:
        windows = training_windows(sequences, n_rows, config.max_length)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    valid_fn = sequential_score_fn(model, valid, device) if valid is not None and len(valid) else None

    best: dict[str, Any] = {}  # the best epoch's weights and validation metrics
    last_metrics: dict[str, float] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        perm = torch.randperm(len(windows), generator=generator)
        total = torch.zeros((), device=device)
        for s in range(0, len(windows), config.batch_size):
            batch = trim_left_padding(windows[perm[s : s + config.batch_size]], 2).to(device)
            negatives = None
            if config.loss == "sampled_softmax":
                negatives = torch.randint(0, n_items, (config.num_negatives,), generator=generator).to(device)
            if isinstance(model, SASRec):
                loss = model.training_loss(batch, config.loss, negatives)
            else:
                inputs, labels = model.mask_items(batch, config.mask_prob, generator)
                loss = model.training_loss(inputs, labels, config.loss, negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        return {"loss": float(total) / len(windows)}

    def validate(epoch: int) -> dict[str, float]:
        res = evaluate_inputs(valid, score_fn=valid_fn, ks=config.eval_ks, batch_size=config.eval_batch_size)
        last_metrics.clear()
        last_metrics.update(res.metrics)
        return valid_metrics(res.metrics)

    def keep_best(epoch: int) -> None:
        best["state"] = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        best["metrics"] = dict(last_metrics)

    stopping = EarlyStopping(f"valid_{SELECTION_METRIC}", "max", config.patience)
    result = fit_epochs(config.model, config.epochs, train_epoch, validate if valid_fn is not None else None,
                        stopping, keep_best=keep_best, restore_best=lambda: model.load_state_dict(best["state"]),
                        eval_every=config.eval_every, max_seconds=config.max_train_seconds,
                        show_progress=config.show_progress, log=logger)
    best_epoch, epochs_run, best_metrics = result.best_epoch, result.epochs_run, best.get("metrics", {})
    history = result.history
    model.eval()
    fit_seconds = time.perf_counter() - start
    logger.info(
        "%s: best epoch %d of %d (valid %s=%.4f, HR@20=%.4f), %d training windows, %.1f s on %s",
        config.model, best_epoch, epochs_run, SELECTION_METRIC, best_metrics.get(SELECTION_METRIC, float("nan")),
        best_metrics.get("HR@20", float("nan")), len(windows), fit_seconds, device,
    )
    return SequentialResult(model, copy.deepcopy(config), best_epoch, epochs_run, pd.DataFrame(history), best_metrics,
                            fit_seconds)


def train_sequential_from_splits(interactions_split: pd.DataFrame, config: SequentialConfig) -> SequentialResult:
    """Train on the seen users' ``train`` rows, early-stop on their ``valid`` rows (history = train items)."""
    sequences, n_items = train_sequences_from_splits(interactions_split)
    valid = eval_inputs_from_splits(interactions_split, "seen", "valid")
    return train_sequential(sequences, n_items, config, valid)


def evaluate_sequential(
    result: SequentialResult,
    interactions_split: pd.DataFrame,
    *,
    split: Literal["valid", "test"] = "test",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int | None = None,
    model: str | None = None,
) -> tuple[pd.DataFrame, dict[str, RankingResult]]:
    """Protocol metrics for seen users (``test``: history = train + valid items) and, for ``test``,
    unseen users scored from their ``unseen_history`` with the trained weights (no retraining)."""
    batch_size = batch_size or result.config.eval_batch_size
    groups: dict[str, GroupSpec] = {}
    seen = eval_inputs_from_splits(interactions_split, "seen", split)
    groups["seen"] = GroupSpec(seen, score_fn=sequential_score_fn(result.model, seen))
    if split == "test":
        unseen = eval_inputs_from_splits(interactions_split, "unseen", "test")
        groups["unseen"] = GroupSpec(unseen, score_fn=sequential_score_fn(result.model, unseen))
    return evaluate_user_groups(groups, model=model or result.config.model, split=split, ks=ks, batch_size=batch_size)
