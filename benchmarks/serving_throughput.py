"""What a request to the packaged MLflow model costs, alone, under concurrent clients, and batched.

    kedro run --pipeline=full                              # once: logs the model this loads
    python -m benchmarks.serving_throughput [--clients 16] [--requests 200] [--batch 64]

Loads the newest logged ``tokenrec_recommender`` model of the project's MLflow store (``sqlite:///mlflow.db``)
with ``mlflow.pyfunc.load_model``, as ``mlflow models serve`` does, and calls ``predict`` in this process (HTTP
and JSON handling of the server come on top):

* sequential single-user requests: milliseconds per request (p50 / p99);
* ``--clients`` threads sending single-user requests at once (mixed ``recommend.top_k``): requests per second,
  latency p50 / p99, and whether every answer has its own request's ``top_k``;
* one request holding ``--batch`` users: milliseconds per user, the way to serve many users at once.

Ends with one summary line.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "tokenrec_recommender"


def load_served_model(project: Path):
    """The newest logged model named ``tokenrec_recommender`` and the seen users' original ids."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("tokenrec_pipeline")
    models = [] if experiment is None else mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id], output_format="list", max_results=1,
        filter_string=f"name = '{MODEL_NAME}'", order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    if not models:
        raise SystemExit(f"error: no logged {MODEL_NAME} in {project / 'mlflow.db'}; run `kedro run --pipeline=full`.")
    model = mlflow.pyfunc.load_model(f"runs:/{models[0].source_run_id}/{MODEL_NAME}")
    user_map = pd.read_parquet(project / "data/03_primary/user_map.parquet")
    users = user_map.loc[user_map["user_group"] == "seen", "original_user"].astype(str).tolist()
    return model, users, models[0].source_run_id


def _request(users: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"user": users, "history": [None] * len(users)})


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1000), float(np.percentile(seconds, 99) * 1000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=PROJECT_ROOT)
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=200, help="single-user requests sent by the clients")
    parser.add_argument("--sequential", type=int, default=30, help="single-user requests sent one after another")
    parser.add_argument("--batch", type=int, default=64, help="users in the one batched request")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, users, run_id = load_served_model(args.project)
    print(f"model: runs:/{run_id}/{MODEL_NAME}; {len(users)} seen users; torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    model.predict(_request(users[:1]), params={"recommend.top_k": 10})  # warm-up

    sequential = []
    for user in rng.choice(users, args.sequential):
        began = time.perf_counter()
        model.predict(_request([str(user)]), params={"recommend.top_k": 10})
        sequential.append(time.perf_counter() - began)
    seq_p50, seq_p99 = _percentiles(sequential)
    print(f"\nsequential single-user requests ({args.sequential}): p50 {seq_p50:.1f} ms, p99 {seq_p99:.1f} ms")

    jobs = [(str(user), int(k)) for user, k in zip(rng.choice(users, args.requests),
                                                   rng.choice([1, 5, 10, 20, 50], args.requests), strict=True)]

    def send(job: tuple[str, int]) -> tuple[float, bool]:
        user, top_k = job
        began = time.perf_counter()
        answer = model.predict(_request([user]), params={"recommend.top_k": top_k})
        return time.perf_counter() - began, len(answer) == top_k

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        results = list(pool.map(send, jobs))
    wall = time.perf_counter() - began
    latencies = [seconds for seconds, _ in results]
    own_top_k = sum(ok for _, ok in results)
    con_p50, con_p99 = _percentiles(latencies)
    print(f"{args.clients} concurrent clients, {args.requests} single-user requests (mixed top_k): "
          f"{args.requests / wall:.1f} requests/s, p50 {con_p50:.0f} ms, p99 {con_p99:.0f} ms; "
          f"{own_top_k}/{args.requests} answers with their own top_k")

    batch_users = [str(u) for u in rng.choice(users, min(args.batch, len(users)), replace=False)]
    batch_times = []
    for _ in range(3):
        began = time.perf_counter()
        answer = model.predict(_request(batch_users), params={"recommend.top_k": 10})
        batch_times.append(time.perf_counter() - began)
    batch_ms = float(np.median(batch_times) * 1000)
    print(f"one request with {len(batch_users)} users: {batch_ms:.0f} ms ({batch_ms / len(batch_users):.1f} ms/user), "
          f"{len(answer)} rows")
    print(f"\nSummary: single request p50 {seq_p50:.0f} ms; {args.clients} clients {args.requests / wall:.1f} req/s "
          f"(p99 {con_p99:.0f} ms); batched {batch_ms / len(batch_users):.1f} ms/user = "
          f"{seq_p50 / (batch_ms / len(batch_users)):.0f}x cheaper per user than one request each")


if __name__ == "__main__":
    main()
