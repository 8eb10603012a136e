"""Synthetic interaction logs with planted collaborative and sequential structure.

The default dataset of the project: it needs no download, is deterministic from the seed,
and is built so that a collaborative model must beat popularity by a clear margin.

Generative process (all steps vectorised with numpy; ``rng = default_rng(seed)``):

1. **Item groups.** ``n_items`` items are dealt at random into ``n_groups`` latent groups of
   (almost) equal size.
2. **Popularity skew.** Each item gets a Zipf weight ``1 / rank**popularity_exponent`` from a
   random permutation of ranks, so every group has a few head items and a long tail.
3. **Users.** Each of ``n_users`` users gets a home group ``g`` uniformly at random and a history
   length ``min_history + Poisson(mean_history - min_history)``.
4. **Sequential drift.** At relative position ``p = t / (n - 1)`` in the history, the user's
   step is drawn from the *next* group ``(g + 1) % n_groups`` with probability ``drift * p``,
   otherwise from the home group — tastes move along a fixed ring of groups over time, so the
   most recent items say more about the next one than old items do.
5. **Noise.** With probability ``noise`` a step ignores groups and draws from global popularity.
6. **Items.** The item of a step is drawn from the chosen group in proportion to the Zipf
   weights; a user's repeated draws of the same item are dropped (implicit feedback).
7. **Time.** Each user starts at a random day in the first ``time_span_days / 2`` days and
   steps forward 1–3 days (plus seconds of jitter) per interaction; the rating is a 1–5 integer
   that is higher inside the home group (so a rating threshold keeps the structure).

Because a user's items come from one or two groups out of ``n_groups``, knowing a user's history
pins down their group; popularity alone cannot, which is why Pop is beatable.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and structure of a synthetic log (see the module docstring)."""

    n_users: int = 1000
    n_items: int = 500
    n_groups: int = 10
    mean_history: float = 20.0
    min_history: int = 6
    popularity_exponent: float = 0.8
    drift: float = 0.5
    noise: float = 0.1
    time_span_days: int = 730

    @classmethod
    def from_params(cls, params: dict | None) -> SyntheticConfig:
        """Build from a parameters dict, naming any unknown or invalid key."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"Unknown parameter(s) ingestion.synthetic.{unknown}; expected some of {sorted(known)}"
            )
        config = cls(**params)
        config.validate()
        return config

    def validate(self) -> None:
        checks = {
            "n_users": self.n_users >= 1,
            "n_items": self.n_items >= self.n_groups >= 1,
            "mean_history": self.mean_history >= self.min_history >= 1,
            "drift": 0.0 <= self.drift <= 1.0,
            "noise": 0.0 <= self.noise <= 1.0,
            "popularity_exponent": self.popularity_exponent >= 0,
            "time_span_days": self.time_span_days >= 2,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(
                    f"Invalid parameter ingestion.synthetic.{name}={getattr(self, name)!r} "
                    "(need n_items >= n_groups >= 1, mean_history >= min_history >= 1, "
                    "0 <= drift, noise <= 1)"
                )


def _draw_from_groups(
    rng: np.random.Generator, groups: np.ndarray, cdf_by_group: list[np.ndarray],
    items_by_group: list[np.ndarray],
) -> np.ndarray:
    """Draw one item per entry of ``groups`` (vectorised per group, not per row)."""
    items = np.empty(len(groups), dtype=np.int64)
    for group, (cdf, members) in enumerate(zip(cdf_by_group, items_by_group, strict=True)):
        rows = np.flatnonzero(groups == group)
        if rows.size:
            picks = np.searchsorted(cdf, rng.random(rows.size) * cdf[-1], side="right")
            items[rows] = members[np.minimum(picks, len(members) - 1)]
    return items


def generate_synthetic_interactions(config: SyntheticConfig, seed: int) -> pd.DataFrame:
    """Generate an interaction log (user, item, timestamp, rating) as described above.

    Args:
        config: sizes and structure strengths.
        seed: the only source of randomness; the same seed gives the same log.

    Returns:
        DataFrame with int64 ``user``, ``item``, ``timestamp`` (Unix seconds) and ``rating``
        columns, ordered by user then time.
    """
    config.validate()
    rng = np.random.default_rng(seed)

    item_group = rng.permutation(np.arange(config.n_items) % config.n_groups)
    ranks = rng.permutation(config.n_items) + 1
    weight = 1.0 / ranks.astype(np.float64) ** config.popularity_exponent
    items_by_group = [np.flatnonzero(item_group == g) for g in range(config.n_groups)]
    cdf_by_group = [np.cumsum(weight[m]) for m in items_by_group]
    global_cdf = np.cumsum(weight)

    home = rng.integers(0, config.n_groups, size=config.n_users)
    extra = rng.poisson(config.mean_history - config.min_history, size=config.n_users)
    lengths = config.min_history + extra
    n_steps = int(lengths.sum())

    user = np.repeat(np.arange(config.n_users, dtype=np.int64), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(n_steps) - starts
    progress = position / np.maximum(np.repeat(lengths, lengths) - 1, 1)

    drifted = rng.random(n_steps) < config.drift * progress
    step_group = (home[user] + drifted.astype(np.int64)) % config.n_groups
    items = _draw_from_groups(rng, step_group, cdf_by_group, items_by_group)
    noisy = rng.random(n_steps) < config.noise
    items[noisy] = np.minimum(
        np.searchsorted(global_cdf, rng.random(int(noisy.sum())) * global_cdf[-1], side="right"),
        config.n_items - 1,
    )

    day = 86_400
    user_start = rng.integers(0, config.time_span_days // 2, size=config.n_users) * day
    gaps = rng.integers(1, 4, size=n_steps) * day + rng.integers(0, day // 2, size=n_steps)
    gaps[position == 0] = 0
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[np.cumsum(lengths) - lengths], lengths)
    timestamp = 1_600_000_000 + user_start[user] + offsets

    in_home = item_group[items] == home[user]
    rating = np.clip(np.where(in_home, 4, 2) + rng.integers(-1, 2, size=n_steps), 1, 5)

    frame = pd.DataFrame(
        {"user": user, "item": items, "timestamp": timestamp.astype(np.int64),
         "rating": rating.astype(np.int64)}
    )
    # A user draws a popular item more than once; implicit feedback keeps the first.
    return frame.drop_duplicates(["user", "item"], keep="first").reset_index(drop=True)
