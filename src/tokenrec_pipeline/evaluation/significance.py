"""Uncertainty of this run's numbers: paired tests against a reference model and bootstrap intervals.

Inputs are the per-user ranks tables every model writes (``data/07_model_output/ranks/*.parquet``:
``model, split, user_group, user_id, target_item, rank``, optionally ``n_greater, n_tied``). Per-user
HR@K / NDCG@K follow the evaluator's expected-rank tie rule (:mod:`tokenrec_pipeline.evaluation.ranking`):
exact from ``n_greater`` / ``n_tied`` when the table has them; otherwise from the expected ``rank`` as
if the target were untied, which is exact for models with continuous scores (LightGCN, MF, SASRec,
TokenRec) and an approximation for tie-heavy scorers such as Pop (a warning says so).

* :func:`paired_tests`: for every model that shares users with the reference (TokenRec), a Wilcoxon
  signed-rank test and a paired t-test on the per-user differences of one metric (NDCG@20 by
  default), over the users both models were evaluated on. Zero differences are dropped by the
  Wilcoxon test (``zero_method="wilcox"``); when every difference is zero both p-values are 1.
* :func:`bootstrap_intervals`: a seeded percentile bootstrap interval (scipy) of each model's mean
  HR@20 and NDCG@20 over its users, resampling users with replacement.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tokenrec_pipeline.evaluation.ranking import expected_hit_rate, expected_ndcg

logger = logging.getLogger(__name__)

RANKS_KEYS = ("model", "split", "user_group", "user_id")
"""Columns every ranks table needs besides ``rank``; a row is one evaluated user of one model."""

SIGNIFICANCE_COLUMNS = (
    "model", "split", "user_group", "n_users", "metric", "value", "ci_low", "ci_high",
    "reference", "n_paired", "mean_diff", "wilcoxon_statistic", "p_wilcoxon", "t_statistic", "p_ttest",
)
"""Columns of :func:`significance_table`: one row per (model, split, user_group, metric)."""


def _parse_metric(metric: str) -> tuple[str, int]:
    name, _, k = metric.partition("@")
    if name not in {"HR", "NDCG"} or not k.isdigit():
        raise ValueError(f"metric must look like 'HR@20' or 'NDCG@20', got {metric!r}.")
    return name, int(k)


def per_user_metrics(ranks: pd.DataFrame, metrics: Sequence[str] = ("HR@20", "NDCG@20")) -> pd.DataFrame:
    """The ranks table with one column per metric: each user's HR@K / NDCG@K.

    Uses ``n_greater`` / ``n_tied`` (the evaluator's exact tie rule) when present; otherwise the
    expected ``rank`` as an untied rank: ``HR@K = [rank < K]``, ``NDCG@K = [rank < K] / log2(rank + 2)``.
    """
    missing = (set(RANKS_KEYS) | {"rank"}) - set(ranks.columns)
    if missing:
        raise ValueError(
            f"ranks table lacks column(s) {sorted(missing)}; expected {list(RANKS_KEYS) + ['rank']} "
            "(data/07_model_output/ranks/<model>_ranks.parquet)."
        )
    out = ranks.copy()
    # Row-wise: concatenated tables may mix models that wrote the tie counts with models that did not.
    if {"n_greater", "n_tied"} <= set(ranks.columns):
        exact = (ranks["n_greater"].notna() & ranks["n_tied"].notna()).to_numpy()
    else:
        exact = np.zeros(len(ranks), dtype=bool)
    rank = ranks["rank"].to_numpy(dtype=np.float64)
    approximate = ~exact & (rank % 1 != 0)
    if approximate.any():
        logger.warning(
            "ranks of %s have tied targets but no n_greater/n_tied columns: per-user metrics use the expected "
            "rank as if untied (their means can differ slightly from the metrics table).",
            sorted(ranks.loc[approximate, "model"].unique()),
        )
    counts = {c: pd.to_numeric(ranks[c], errors="coerce").fillna(0).to_numpy(np.int64) for c in ("n_greater", "n_tied")
              if exact.any()}
    n_greater, n_tied = counts.get("n_greater"), counts.get("n_tied")
    for metric in metrics:
        name, k = _parse_metric(metric)
        hit = rank < k
        values = hit.astype(np.float64) if name == "HR" else np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
        if n_greater is not None:
            fn = expected_hit_rate if name == "HR" else expected_ndcg
            values = np.where(exact, fn(n_greater, n_tied, k), values)
        out[metric] = values
    return out


def paired_test(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Wilcoxon signed-rank and paired t-test of ``values - reference`` (two-sided, same users, same order)."""
    values, reference = np.asarray(values, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired_test needs aligned arrays, got {values.shape} and {reference.shape}.")
    diff = values - reference
    result = {"n_paired": int(len(diff)), "mean_diff": float(diff.mean()) if len(diff) else float("nan"),
              "wilcoxon_statistic": float("nan"), "p_wilcoxon": float("nan"),
              "t_statistic": float("nan"), "p_ttest": float("nan")}
    if len(diff) < 2:
        return result
    if not np.any(diff):
        # Identical per-user values: no evidence of a difference (scipy would divide by zero).
        return {**result, "p_wilcoxon": 1.0, "p_ttest": 1.0}
    w = stats.wilcoxon(values, reference, zero_method="wilcox", alternative="two-sided")
    t = stats.ttest_rel(values, reference)
    return {**result, "wilcoxon_statistic": float(w.statistic), "p_wilcoxon": float(w.pvalue),
            "t_statistic": float(t.statistic), "p_ttest": float(t.pvalue)}


def bootstrap_interval(values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (users resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    if np.all(values == values[0]):  # every resample has the same mean; scipy would warn about degeneracy
        return float(values[0]), float(values[0])
    res = stats.bootstrap((values,), np.mean, n_resamples=int(n_resamples), confidence_level=confidence,
                          method="percentile", rng=np.random.default_rng(seed), vectorized=True,
                          batch=200)  # bounds memory: 200 resamples x n_users at a time
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def significance_table(
    ranks: pd.DataFrame,
    reference: str = "tokenrec",
    test_metric: str = "NDCG@20",
    interval_metrics: Sequence[str] = ("HR@20", "NDCG@20"),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    splits: Sequence[str] | None = ("test",),
) -> pd.DataFrame:
    """One row per (model, split, user_group, metric) of ``interval_metrics``: the mean over users,
    its bootstrap interval and, for ``test_metric``, the paired tests against ``reference`` on the
    users both were evaluated on (NaN where the reference has no users in that group).

    Args:
        ranks: the ranks tables of every compared model, concatenated.
        reference: the model every other one is compared with (the reference's own row has NaN tests).
        splits: splits to report (TokenRec is evaluated on ``test`` only); None keeps all.
    """
    metrics = list(dict.fromkeys([*interval_metrics, test_metric]))
    table = per_user_metrics(ranks, metrics)
    if splits is not None:
        table = table[table["split"].isin(list(splits))]
    rows = []
    for (split, group), part in table.groupby(["split", "user_group"], sort=False):
        ref = part[part["model"] == reference].drop_duplicates("user_id").set_index("user_id")
        for model, rows_of_model in part.groupby("model", sort=False):
            mine = rows_of_model.drop_duplicates("user_id").set_index("user_id")
            common = mine.index.intersection(ref.index)
            tests = paired_test(mine.loc[common, test_metric].to_numpy(), ref.loc[common, test_metric].to_numpy()) \
                if model != reference and len(ref) else {}
            for metric in metrics:
                low, high = bootstrap_interval(mine[metric].to_numpy(), n_resamples, confidence, seed)
                row = {"model": model, "split": split, "user_group": group, "n_users": len(mine), "metric": metric,
                       "value": float(mine[metric].mean()), "ci_low": low, "ci_high": high, "reference": reference}
                if metric == test_metric:
                    row.update(tests)
                rows.append(row)
    return pd.DataFrame(rows, columns=list(SIGNIFICANCE_COLUMNS))
