"""Decoded tuples and what the evaluator needs from them.

:class:`GenerationOutput` holds the beam-search results (with invalid-tuple counts); :func:`ranked_items` turns
them into item lists, :func:`generation_score_matrix` / :func:`generation_score_fn` into full-catalogue scores
for :func:`~tokenrec_pipeline.evaluation.ranking.evaluate_ranking`.

Shapes: ``N`` prompts, ``k`` tuples kept per prompt, ``K`` codebooks, ``I`` items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tokenrec_pipeline.evaluation.ranking import histories_to_csr
from tokenrec_pipeline.models.autoregressive.trie import CodeTrie

NEG_INF = float("-inf")


@dataclass
class GenerationOutput:
    """Decoded top-k tuples per prompt, in input order, best first.

    Attributes:
        codes: (N, k, K) int64 generated tuples; -1 in empty slots (fewer than k valid continuations).
        scores: (N, k) float32 sums of per-step log-probabilities; -inf in empty slots.
        leaves: (N, k) int64 tuple id in the :class:`CodeTrie`; -1 for an invalid tuple (no such item)
            and for empty slots.
        mode: "constrained" or "unconstrained"; beam_size: W.
        seconds: Wall time of the decoding call.
    """

    codes: np.ndarray
    scores: np.ndarray
    leaves: np.ndarray
    mode: str
    beam_size: int
    seconds: float = 0.0

    @property
    def generated(self) -> np.ndarray:
        """(N, k) bool: the slot holds a generated tuple (valid or not)."""
        return np.isfinite(self.scores)

    @property
    def invalid(self) -> np.ndarray:
        """(N, k) bool: a generated tuple that is no item's tuple (hallucinated)."""
        return self.generated & (self.leaves < 0)

    @property
    def n_generated(self) -> int:
        return int(self.generated.sum())

    @property
    def n_invalid(self) -> int:
        """Generated tuples that map to no item (always 0 in constrained mode)."""
        return int(self.invalid.sum())

    @property
    def invalid_rate(self) -> float:
        """n_invalid / n_generated (nan when nothing was generated)."""
        return self.n_invalid / self.n_generated if self.n_generated else float("nan")

    def summary(self) -> dict[str, float]:
        """Counts for logs / MLflow: prompts, generated, invalid, invalid rate, prompts whose top-1 is invalid."""
        top1_invalid = float(self.invalid[:, 0].sum()) if self.invalid.shape[1] else 0.0
        return {
            "prompts": float(self.codes.shape[0]),
            "generated": float(self.n_generated),
            "invalid": float(self.n_invalid),
            "invalid_rate": float(self.invalid_rate),
            "top1_invalid": top1_invalid,
            "seconds": float(self.seconds),
        }


def ranked_items(
    output: GenerationOutput,
    trie: CodeTrie,
    k: int | None = None,
    exclude: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn decoded tuples into item lists: valid tuples in beam order, colliding items in ascending id.

    Invalid tuples recommend nothing (they are counted in ``output``, not here); excluded items (history)
    are dropped. Items beyond the beam are not invented: short lists are padded.

    Args:
        output: From :meth:`AutoregressiveRecommender.generate`.
        trie: The code table used for decoding.
        k: List length (default: the longest list).
        exclude: Optional per-prompt item ids to drop.

    Returns:
        ``(ids, scores)``, both (N, k): item ids (int64, -1 padding) and their tuple's score (float32, -inf
        padding). Items of one tuple share its score.
    """
    n = output.codes.shape[0]
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude has {len(exclude)} entries for {n} prompts.")
    leaf_indptr = trie.leaf_indptr.cpu().numpy()
    leaf_items = trie.leaf_items.cpu().numpy()
    lists: list[tuple[list[int], list[float]]] = []
    for row in range(n):
        banned = set(int(i) for i in exclude[row]) if exclude is not None else set()
        ids: list[int] = []
        scores: list[float] = []
        for leaf, score in zip(output.leaves[row].tolist(), output.scores[row].tolist(), strict=True):
            if leaf < 0:
                continue
            for item in leaf_items[leaf_indptr[leaf] : leaf_indptr[leaf + 1]].tolist():
                if item not in banned:
                    ids.append(item)
                    scores.append(score)
        lists.append((ids, scores))
    width = k if k is not None else max((len(ids) for ids, _ in lists), default=0)
    out_ids = np.full((n, width), -1, dtype=np.int64)
    out_scores = np.full((n, width), NEG_INF, dtype=np.float32)
    for row, (ids, scores) in enumerate(lists):
        m = min(width, len(ids))
        out_ids[row, :m] = ids[:m]
        out_scores[row, :m] = scores[:m]
    return out_ids, out_scores


def generation_score_matrix(
    output: GenerationOutput,
    trie: CodeTrie,
    rows: Sequence[int] | np.ndarray | None = None,
    histories: Sequence[Sequence[int]] | None = None,
) -> Tensor:
    """Full-catalogue score matrix from decoded tuples, for the project's evaluator.

    Every item of a generated valid tuple gets the tuple's score (colliding items tie); every other item
    -- beyond the beam, or only reachable through invalid tuples -- gets -inf. With the evaluator's tie
    rule a target outside the beam therefore gets the expected rank of a uniformly random order of all
    non-generated items: no credit is invented for it beyond chance (HR@K > 0 only if K > beam items).

    Args:
        output: Decoded tuples.
        trie: The code table used for decoding.
        rows: Optional subset of output rows (default: all), e.g. one evaluation batch.
        histories: Optional per-row history items set to -inf (row-aligned with ``rows``). Leave it
            ``None`` when feeding :func:`~tokenrec_pipeline.evaluation.ranking.evaluate_ranking`, which
            excludes histories itself and never the target.

    Returns:
        (len(rows), I) float32 tensor on the CPU.
    """
    selected = np.arange(output.codes.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    leaves = torch.as_tensor(output.leaves[selected])
    scores = torch.as_tensor(output.scores[selected])
    matrix = torch.full((len(selected), trie.n_items), NEG_INF, dtype=torch.float32)
    valid = leaves >= 0
    if bool(valid.any()):
        row_ids, slot = torch.nonzero(valid, as_tuple=True)
        leaf = leaves[row_ids, slot]
        leaf_indptr, leaf_items = trie.leaf_indptr.cpu(), trie.leaf_items.cpu()
        counts = leaf_indptr[leaf + 1] - leaf_indptr[leaf]
        expanded_rows = torch.repeat_interleave(row_ids, counts)
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(leaf_indptr[leaf] - offsets, counts) + torch.arange(int(counts.sum()))
        matrix[expanded_rows, leaf_items[positions]] = torch.repeat_interleave(scores[row_ids, slot], counts)
    if histories is not None:
        if len(histories) != len(selected):
            raise ValueError(f"histories has {len(histories)} rows for {len(selected)} output rows.")
        indptr, indices = histories_to_csr(list(histories), len(selected))
        history_rows = np.repeat(np.arange(len(selected)), np.diff(indptr))
        matrix[torch.as_tensor(history_rows), torch.as_tensor(indices)] = NEG_INF
    return matrix


def generation_score_fn(
    output: GenerationOutput, trie: CodeTrie, users: Sequence[int] | np.ndarray
) -> Callable[[Tensor], Tensor]:
    """A ``score_fn`` for :func:`~tokenrec_pipeline.evaluation.ranking.evaluate_ranking`.

    Args:
        output: Decoded tuples, row i for ``users[i]`` (users must be distinct).
        trie: The code table.
        users: (N,) user ids, row-aligned with ``output``.

    Returns:
        ``score_fn(user_ids (B,)) -> (B, I)`` built on the fly per batch (no N x I matrix is kept).
    """
    users_np = np.asarray(users, dtype=np.int64)
    if len(np.unique(users_np)) != len(users_np):
        raise ValueError("users must be distinct to look up their generated rows.")
    row_of = {int(u): r for r, u in enumerate(users_np.tolist())}

    def score_fn(user_ids: Tensor) -> Tensor:
        return generation_score_matrix(output, trie, rows=[row_of[int(u)] for u in user_ids.tolist()])

    return score_fn
