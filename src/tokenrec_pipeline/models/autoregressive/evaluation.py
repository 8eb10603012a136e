"""Evaluating beam-search generation with the project's evaluator (:func:`evaluate_generation`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from tokenrec_pipeline.evaluation.ranking import DEFAULT_KS, RankingResult, evaluate_ranking
from tokenrec_pipeline.models.autoregressive.config import DecodeMode
from tokenrec_pipeline.models.autoregressive.generation import GenerationOutput, generation_score_fn
from tokenrec_pipeline.models.autoregressive.model import AutoregressiveRecommender
from tokenrec_pipeline.models.autoregressive.trie import CodeTrie


def evaluate_generation(
    model: AutoregressiveRecommender,
    prompts: Sequence[str],
    users: Sequence[int] | np.ndarray,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int] | np.ndarray,
    trie: CodeTrie,
    beam_size: int = 20,
    mode: DecodeMode = "constrained",
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 64,
    show_progress: bool = False,
) -> tuple[RankingResult, GenerationOutput]:
    """HR@K / NDCG@K of beam-search generation under the project's protocol.

    Decoding excludes each user's history items other than the target -- the evaluator's own rule
    (history -inf, the target never excluded); under the project's dedup each pair occurs once, so this is
    simply the history. Items outside the beam score -inf (see :func:`generation_score_matrix`); with
    ``beam_size < max(ks)`` the deeper cut-offs are filled by chance only, hence the warning.

    Returns:
        The evaluator's :class:`~tokenrec_pipeline.evaluation.ranking.RankingResult` (its ``metrics`` gain
        ``invalid_rate``) and the raw :class:`GenerationOutput`.
    """
    targets_np = np.asarray(targets, dtype=np.int64)
    if beam_size < max(ks):
        warnings.warn(
            f"beam_size {beam_size} < max cut-off {max(ks)}: items beyond the beam are unranked (-inf), so "
            f"HR@{max(ks)} only gains chance-level credit past the beam.",
            stacklevel=2,
        )
    exclude = [[int(i) for i in h if int(i) != int(t)] for h, t in zip(histories, targets_np.tolist(), strict=True)]
    output = model.generate(prompts, trie, beam_size, mode=mode, exclude=exclude, batch_size=batch_size,
                            show_progress=show_progress)
    score_fn = generation_score_fn(output, trie, users)
    result = evaluate_ranking(users, list(histories), targets_np, score_fn=score_fn, ks=ks)
    result.metrics["invalid_rate"] = float(output.invalid_rate)
    return result, output
