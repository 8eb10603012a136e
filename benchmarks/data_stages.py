"""Wall time of ingestion + preprocessing (the data stages' own functions, no Kedro overhead).

    python -m benchmarks.data_stages [--shared-data ../shared/data]

Prints one line per dataset: interactions in, rows after 5-core, seconds per step and total.
The synthetic log is sized like MovieLens-1M (about 1,000,000 interactions).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tokenrec_pipeline.data.preprocess import (
    dataset_statistics,
    filter_k_core,
    split_leave_one_out,
    to_implicit_feedback,
)
from tokenrec_pipeline.data.sources import read_movielens_100k
from tokenrec_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_interactions


def _time_stages(name: str, ingest) -> None:
    timings = {}
    start = time.perf_counter()
    frame = ingest().astype({"user": str, "item": str})
    timings["ingest"] = time.perf_counter() - start
    for step, func in [
        ("implicit", lambda f: to_implicit_feedback(f)),
        ("k_core", lambda f: filter_k_core(f, 5)),
        ("split", lambda f: split_leave_one_out(f, 0.1, seed=42)[0]),
        ("statistics", lambda f: (dataset_statistics(f), f)[1]),
    ]:
        t0 = time.perf_counter()
        result = func(frame)
        timings[step] = time.perf_counter() - t0
        if step == "implicit":
            n_in = len(result)
        frame = result
    total = sum(timings.values())
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    print(f"{name}: {n_in:,} implicit interactions -> {len(frame):,} after 5-core; {steps}; total {total:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    config = SyntheticConfig(n_users=6040, n_items=3700, n_groups=4, mean_history=200.0, min_history=20,
                             popularity_exponent=0.6)
    _time_stages("synthetic (ML-1M size)", lambda: generate_synthetic_interactions(config, seed=42))
    ml100k = args.shared_data / "ml-100k"
    if ml100k.is_dir():
        _time_stages("ml-100k", lambda: read_movielens_100k(ml100k))
    else:
        print(f"ml-100k: skipped ({ml100k} not found)")


if __name__ == "__main__":
    main()
