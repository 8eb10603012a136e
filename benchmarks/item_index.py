"""Exact vs approximate item index at catalogue scale: build time, memory, query time, recall@20.

    python -m benchmarks.item_index [--items 1000000] [--queries 10000] [--threads 1]

Data (``ClusteredMixture``): ``--clusters`` centres drawn uniformly on the unit sphere in d = 64; each item
belongs to one cluster, chosen with Zipf-like popularity (cluster of rank r has weight r^-0.8, so a few
clusters are large and many small, like item groups in a real catalogue). An item is its centre plus a
random point of a cluster-specific 8-dimensional subspace (norm about the cluster's spread, uniform in
[0.3, 0.7]) plus small isotropic noise (norm 0.05): within a group items vary along a few latent factors,
as collaborative embeddings do. Queries are drawn from the same mixture, as user vectors land near the
groups they like. ANN quality depends on this structure: with isotropic 64-d noise inside large clusters
(``--subspace 64``) neighbours are near-ties and graph indexes lose much of their recall.

Every option goes through the project's own ``build_item_index`` / ``search`` (cosine via inner product on
normalised vectors, item-id map). Reported per option:

* build: seconds to normalise, train (IVF k-means) and add all items;
* memory: bytes of the serialised index (vectors + id map + lists or graph), what the catalogue stores;
* ms/query batched: wall time of ``search`` over all queries in batches of ``--batch`` / number of queries;
* ms/query single: the same for ``--single`` queries one by one (interactive serving);
* recall@20: mean |approximate top-20 ∩ exact top-20| / 20 against ``Flat`` (exact) on the same queries.

faiss runs with ``--threads`` OpenMP threads (default 1, so timings do not depend on what else runs).
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from tokenrec_pipeline.evaluation.item_index import ItemIndex, build_item_index, search, set_search_params
from tokenrec_pipeline.reporting.tables import markdown_table

# (factory, search parameter name, values): each index is built once and searched at every value.
DEFAULT_OPTIONS: list[tuple[str, str | None, list[int]]] = [
    ("Flat", None, [0]),
    ("IVF1024,Flat", "nprobe", [4, 8, 16, 32]),
    ("IVF4096,Flat", "nprobe", [8, 16, 32, 64]),
    ("HNSW32", "efSearch", [16, 32, 64, 128]),
]
RECALL_TARGET, SPEEDUP_TARGET = 0.95, 10.0


@dataclass
class ClusteredMixture:
    """The synthetic item/query distribution of the module docstring (fixed by its own seed)."""

    dim: int = 64
    n_clusters: int = 1000
    subspace: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.n_clusters, self.dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # Orthonormal basis of each cluster's subspace, scaled by the cluster's spread.
        bases = np.linalg.qr(rng.standard_normal((self.n_clusters, self.dim, self.subspace)))[0]
        spread = rng.uniform(0.3, 0.7, size=self.n_clusters)
        self.bases = (bases.transpose(0, 2, 1) * spread[:, None, None]).astype(np.float32)  # (C, s, d)
        weights = 1.0 / np.arange(1, self.n_clusters + 1) ** 0.8
        self.weights = weights / weights.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` float32 vectors (unnormalised, as embeddings come)."""
        cluster = rng.choice(self.n_clusters, size=n, p=self.weights)
        out = rng.standard_normal((n, self.dim), dtype=np.float32) * np.float32(0.05 / np.sqrt(self.dim))
        out += self.centres[cluster]
        for c in np.unique(cluster):  # per cluster: a (n_c, s) @ (s, d) product, no (n, s, d) temporary
            rows = np.flatnonzero(cluster == c)
            coefficients = rng.standard_normal((rows.shape[0], self.subspace), dtype=np.float32)
            out[rows] += coefficients @ self.bases[c] / np.float32(np.sqrt(self.subspace))
        return out


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx_i ∩ exact_i| / k (ids; -1 slots never match a real id)."""
    k = exact.shape[1]
    hits = [np.intersect1d(a, e, assume_unique=True).shape[0] for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) / k


def index_bytes(index: ItemIndex) -> int:
    """Size of the index as faiss serialises it (what ``save_item_index`` writes)."""
    return int(faiss.serialize_index(index.cpu_index).nbytes)


@dataclass
class Timing:
    batched_ms: float
    single_ms: float
    ids: np.ndarray


def time_queries(index: ItemIndex, queries: np.ndarray, k: int, batch: int, n_single: int) -> Timing:
    """ms/query of ``search`` in batches and one query at a time; also returns the batched top-k ids."""
    search(index, queries[:batch], k)  # warm-up (first-touch of memory, lazy structures)
    start = time.perf_counter()
    ids = np.vstack([search(index, queries[i : i + batch], k)[0] for i in range(0, len(queries), batch)])
    batched = (time.perf_counter() - start) * 1000 / len(queries)
    start = time.perf_counter()
    for i in range(n_single):
        search(index, queries[i : i + 1], k)
    single = (time.perf_counter() - start) * 1000 / max(n_single, 1)
    return Timing(batched, single, ids)


def run(items: np.ndarray, queries: np.ndarray, options: list[tuple[str, str | None, list[int]]], k: int = 20,
        batch: int = 1000, n_single: int = 200, seed: int = 0, log=print) -> pd.DataFrame:
    """Benchmark every option on the same items and queries; the first option must be the exact ``Flat``."""
    if options[0][0] != "Flat":
        raise ValueError("The first option must be 'Flat': it is the exact reference for recall.")
    rows, exact_ids, exact_ms = [], None, None
    for factory, param, values in options:
        gc.collect()
        start = time.perf_counter()
        index = build_item_index(items, use_gpu=False, factory=factory, seed=seed)
        build_s = time.perf_counter() - start
        size_mb = index_bytes(index) / 2**20
        for value in values:
            if param is not None:
                set_search_params(index, {param: value})
            timing = time_queries(index, queries, k, batch, n_single)
            if exact_ids is None:
                exact_ids, exact_ms = timing.ids, timing.batched_ms
            row = {
                "index": factory,
                "search": f"{param}={value}" if param else "exact",
                "build_s": build_s,
                "memory_MB": size_mb,
                "ms/query batched": timing.batched_ms,
                "ms/query single": timing.single_ms,
                "speed-up vs Flat": exact_ms / timing.batched_ms,
                "recall@20": recall_at_k(timing.ids, exact_ids),
            }
            rows.append(row)
            log(f"  {row['index']:<14} {row['search']:<12} build {build_s:7.1f}s  {size_mb:7.1f} MB  "
                f"{timing.batched_ms:8.4f} ms/q batched  {timing.single_ms:8.3f} ms/q single  "
                f"x{row['speed-up vs Flat']:6.1f}  recall@20 {row['recall@20']:.4f}", flush=True)
        del index
    return pd.DataFrame(rows)


def best_option(table: pd.DataFrame) -> pd.Series | None:
    """The fastest (batched) option whose recall@20 reaches the target, or None."""
    good = table[(table["recall@20"] >= RECALL_TARGET) & (table["index"] != "Flat")]
    return None if good.empty else good.sort_values("ms/query batched").iloc[0]


def parse_option(text: str) -> tuple[str, str | None, list[int]]:
    """``FACTORY[:param=v1/v2/...]``, e.g. ``IVF1024,Flat:nprobe=8/16`` or ``HNSW32:efSearch=64``."""
    factory, _, spec = text.partition(":")
    if not spec:
        return factory, None, [0]
    param, _, values = spec.partition("=")
    return factory, param, [int(v) for v in values.split("/")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--subspace", type=int, default=8, help="dimension of each cluster's subspace")
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call for the batched timing")
    parser.add_argument("--single", type=int, default=200, help="queries timed one by one")
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", type=parse_option, default=None,
                        help="FACTORY[:param=v1/v2], repeatable; the default set is Flat, IVF1024, IVF4096, HNSW32. "
                             "The first must be Flat.")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    mixture = ClusteredMixture(args.dim, args.clusters, args.subspace, args.seed)
    items = mixture.sample(args.items, rng)
    queries = mixture.sample(args.queries, np.random.default_rng(args.seed + 1))
    print(f"{args.items:,} items and {args.queries:,} queries, d={args.dim}, {args.clusters} Zipf-weighted clusters "
          f"with {args.subspace}-d spread "
          f"(generated in {time.perf_counter() - start:.1f}s); faiss {faiss.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}", flush=True)
    table = run(items, queries, args.option or DEFAULT_OPTIONS, batch=args.batch, n_single=args.single, seed=args.seed)
    print()
    print(markdown_table(table, floatfmt=".3f"))
    best = best_option(table)
    if best is None:
        print(f"No approximate option reached recall@20 >= {RECALL_TARGET}.")
    else:
        verdict = "meets" if best["speed-up vs Flat"] >= SPEEDUP_TARGET else "MISSES"
        print(f"Fastest option with recall@20 >= {RECALL_TARGET}: {best['index']} {best['search']} -- "
              f"recall@20 {best['recall@20']:.4f}, {best['ms/query batched']:.4f} ms/query batched, "
              f"{best['speed-up vs Flat']:.1f}x faster than exact ({verdict} the {SPEEDUP_TARGET:.0f}x target).")


if __name__ == "__main__":
    main()
