"""LLM4Rec's training objectives and negative sampling.

:func:`tokenrec_loss` is the paper's pairwise cosine loss::

    L = 1 - cos(z, q_pos)                    for the target item      (lambda = +1)
    L = max(0, cos(z, q_neg) - gamma)        for each sampled negative (lambda = -1)

averaged over all (prompt, item) pairs, which is exactly ``torch.nn.CosineEmbeddingLoss(margin=gamma)``
on the stacked pairs -- what the authors' code calls (with gamma = 0 and one negative per prompt).
:func:`softmax_loss` is the full-catalogue alternative; :func:`sample_prompt_negatives` draws the negatives, never
the target nor (optionally) a history item, whose padded table :func:`padded_history_table` builds.

Shapes: ``B`` batch, ``d`` CF dimension, ``n`` negatives per prompt, ``I`` items.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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


def padded_history_table(histories: Sequence[Sequence[int]], fill: int = -1) -> torch.Tensor:
    """List of variable-length item-id lists -> (N, max_len) long tensor padded with ``fill``."""
    width = max((len(h) for h in histories), default=0)
    padded = torch.full((len(histories), max(width, 1)), fill, dtype=torch.long)
    for row, history in enumerate(histories):
        if len(history):
            padded[row, : len(history)] = torch.as_tensor(list(history), dtype=torch.long)
    return padded


def sample_prompt_negatives(
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
