"""How each stage's cost grows with data: wall time and peak memory at several sizes, and the growth exponent.

    python -m benchmarks.cost_curves [--sizes 100000 300000 1000000 3000000] [--stages ...]

Data: the project's synthetic generator (``tokenrec_pipeline.data.synthetic``) at N target interactions,
with the catalogue growing with it: N/20 users (mean history 20), N/50 items, N/10,000 groups (at least 10).

Stages (each size x stage runs in a fresh subprocess, so its peak memory is its own; inputs a stage needs are
prepared in that process before the clock starts):

* ``data`` -- ingestion + preprocessing node functions: generate, ids to strings (as ingestion does), implicit
  feedback, 5-core, leave-one-out split with unseen users, statistics.
* ``lightgcn_epoch`` -- one LightGCN epoch (``train_cf``, epochs=1, no validation; default batch 2048).
* ``lightgcn_step`` -- one mini-batch step of it (full-graph propagation, BPR loss, backward, Adam step).
  LightGCN re-propagates the whole graph every step, so an epoch costs (N / batch) x step.
* ``tokenizer_fit`` -- MQ tokenizers for users and items (``parameters_tokenization.yml``) for a fixed 5 epochs.
* ``prompts`` -- the prompting node: train/valid/test prompt tables from the split and token tables.
* ``llm4rec_step`` -- one LLM4Rec training step (packaged MiniLM, batch 32, the 2*3*256 ID tokens), marginal
  cost: (time of 4 steps - time of 1 step) / 3.
* ``llm4rec_inference`` -- per-user retrieval: encode 128 test prompts (batch 64) + exact search of the item index.
* ``index_query`` -- exact (Flat) item index over all items: ms per query for 1,000 queries in one batch.

Peak memory is the process' peak resident set size during the stage (``VmHWM`` after resetting it through
``/proc/self/clear_refs``), so it includes the stage's inputs and the Python/torch runtime. Sizes are given
as target interactions; the exponent is the least-squares slope of log(cost) against log(interactions after
5-core), where cost is wall seconds, or s/step, ms/user, ms/query for the last three stages. The language
model stages are measured at the smallest and largest size only (their cost does not depend on the log).
Threads: torch and faiss run with 1 thread (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

STAGES = ("data", "lightgcn_epoch", "lightgcn_step", "tokenizer_fit", "prompts", "llm4rec_step",
          "llm4rec_inference", "index_query")
# What each stage's curve is fitted on (a record key) and its unit; the rest use the stage's wall time.
COST = {"llm4rec_step": ("seconds_per_step", "s/step"), "llm4rec_inference": ("ms_per_user", "ms/user"),
        "index_query": ("ms_per_query", "ms/query")}
RESULT_MARK = "COST_CURVE_RESULT "
CONF = Path("conf/base")
TOKENIZER_EPOCHS = 5


# ----------------------------------------------------------------------------- memory


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs`` 5); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- inputs


def synthetic_config(n_interactions: int):
    """The synthetic log configuration for about ``n_interactions`` interactions (module docstring)."""
    from tokenrec_pipeline.data.synthetic import SyntheticConfig

    n_items = max(500, n_interactions // 50)
    return SyntheticConfig(n_users=max(100, n_interactions // 20), n_items=n_items,
                           n_groups=max(10, n_interactions // 10_000), mean_history=20.0, min_history=6)


def _params(name: str, file: str | None = None) -> dict:
    """``name`` from ``conf/base/parameters_<file or name>.yml``: the project's own defaults."""
    import yaml

    return yaml.safe_load((CONF / f"parameters_{file or name}.yml").read_text())[name]


def run_data_stage(n_interactions: int, seed: int = 42) -> tuple[pd.DataFrame, dict]:
    """Ingestion + preprocessing through the stages' node functions; returns (split, sizes)."""
    from tokenrec_pipeline.data.synthetic import generate_synthetic_interactions
    from tokenrec_pipeline.pipelines.preprocessing.nodes import (
        apply_k_core,
        make_implicit_feedback,
        split_interactions,
        summarise_dataset,
    )

    params = _params("preprocessing")
    interactions = generate_synthetic_interactions(synthetic_config(n_interactions), seed).astype(
        {"user": str, "item": str}
    )
    core = apply_k_core(make_implicit_feedback(interactions, params), params)
    split = split_interactions(core, params, seed)[0]
    summarise_dataset(split)
    sizes = {"interactions": int(len(split)), "users": int(split["user_id"].nunique()),
             "items": int(split["item_id"].nunique())}
    return split, sizes


def _random_token_table(n_ids: int, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    """A token table shaped like the tokenization stage's output (K=3 codes from 256 per id)."""
    from tokenrec_pipeline.models.tokenizers.tokens import codes_to_token_strings

    codes = rng.integers(0, 256, size=(n_ids, 3))
    return pd.DataFrame({"id": np.arange(n_ids, dtype=np.int64), "tokens": codes_to_token_strings(codes, prefix)})


def _prompt_tables(split: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, ...]:
    users = _random_token_table(int(split["user_id"].max()) + 1, rng, "u")
    items = _random_token_table(int(split["item_id"].max()) + 1, rng, "i")
    return _build_prompts(split, users, items)


def _build_prompts(split: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """The prompting stage's train / valid / test tables (random tokens: its cost does not depend on them)."""
    from tokenrec_pipeline.data.prompts import PromptConfig, build_prompt_samples

    config = PromptConfig.from_params(_params("prompting"), 42)
    return build_prompt_samples(split, users.set_index("id")["tokens"], items.set_index("id")["tokens"], config)


def _item_vectors(n_items: int, rng: np.random.Generator):
    import torch

    return torch.from_numpy(rng.standard_normal((n_items, 64)).astype(np.float32))


def _user_tokenizer(rng: np.random.Generator):
    """A fitted user tokenizer with the random token tables' K=3 x 256 codes (``parameters_tokenization.yml``
    otherwise, one epoch on random vectors): the ``residual_user`` head decodes the prompt's user codes with it."""
    from tokenrec_pipeline.pipelines.tokenization.nodes import fit_id_tokenizer

    params = {**_params("tokenizer", "tokenization"), "n_codebooks": 3, "codebook_size": 256, "epochs": 1,
              "patience": 1, "device": "cpu"}
    return fit_id_tokenizer(_item_vectors(4 * 256, rng), params, params["quantizer"], params["user"], 0)


def _llm4rec_model(item_vectors, rng: np.random.Generator):
    """The default ``llm4rec.model`` (packaged MiniLM) with the 2*3*256 ID tokens, built as the llm4rec stage does."""
    import torch

    from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, build_llm4rec
    from tokenrec_pipeline.models.tokenizers.tokens import token_vocabulary

    config = LLM4RecConfig.from_dict({**_params("llm4rec")["model"], "cf_dim": 64, "seed": 0})
    user_tokenizer = _user_tokenizer(rng) if config.head == "residual_user" else None
    return build_llm4rec(config, token_vocabulary(3, 256, "u"), token_vocabulary(3, 256, "i"),
                         device=torch.device("cpu"), user_tokenizer=user_tokenizer, item_vectors=item_vectors)


# ----------------------------------------------------------------------------- stages


def _prepare(stage: str, n_interactions: int) -> tuple[Callable[[], dict], dict]:
    """(timed function, sizes) for one stage at one size; everything before the clock happens here."""
    rng = np.random.default_rng(0)
    if stage == "data":
        holder: dict = {}

        def data() -> dict:
            holder["split"], sizes = run_data_stage(n_interactions)  # kept alive: its memory is part of the stage
            return sizes

        return data, {}
    split, sizes = run_data_stage(n_interactions)

    if stage in ("lightgcn_epoch", "lightgcn_step"):
        from tokenrec_pipeline.models.cf import CFConfig, train_cf, train_interactions_from_splits

        train = train_interactions_from_splits(split)
        config = CFConfig(**{**_params("cf_pretraining")["lightgcn"], "epochs": 1, "device": "cpu", "seed": 0,
                             "show_progress": False})
        if stage == "lightgcn_epoch":
            return lambda: {"batches": int(np.ceil(len(train.users) / config.batch_size)),
                            "_": train_cf(train, config, valid=None)}, sizes
        return _lightgcn_step(train, config), sizes

    if stage == "tokenizer_fit":
        from tokenrec_pipeline.pipelines.tokenization.nodes import fit_id_tokenizer

        params = {**_params("tokenizer", "tokenization"), "epochs": TOKENIZER_EPOCHS, "patience": TOKENIZER_EPOCHS,
                  "device": "cpu"}
        users, items = _item_vectors(sizes["users"], rng), _item_vectors(sizes["items"], rng)

        def fit() -> dict:
            fit_id_tokenizer(users, params, params["quantizer"], params["user"], 0)
            fit_id_tokenizer(items, params, params["quantizer"], params["item"], 0)
            return {}

        return fit, sizes

    if stage == "prompts":
        users = _random_token_table(int(split["user_id"].max()) + 1, rng, "u")
        items = _random_token_table(int(split["item_id"].max()) + 1, rng, "i")
        def prompts() -> dict:
            train, valid, test = _build_prompts(split, users, items)
            return {"train_prompts": len(train)}

        return prompts, sizes

    if stage == "llm4rec_step":
        return _llm4rec_step(split, sizes, rng), sizes
    if stage == "llm4rec_inference":
        return _llm4rec_inference(split, sizes, rng), sizes
    if stage == "index_query":
        from tokenrec_pipeline.evaluation.item_index import build_item_index, search

        vectors = _item_vectors(sizes["items"], rng).numpy()
        queries = rng.standard_normal((1000, 64)).astype(np.float32)

        def query() -> dict:
            index = build_item_index(vectors, use_gpu=False)
            start = time.perf_counter()
            search(index, queries, 20)
            return {"ms_per_query": (time.perf_counter() - start) * 1000 / len(queries)}

        return query, sizes
    raise ValueError(f"Unknown stage {stage!r}; choose from {STAGES}.")


def _lightgcn_step(train, config) -> Callable[[], dict]:
    """One LightGCN training step with the model code's own pieces (propagation over the whole graph)."""
    import torch

    from tokenrec_pipeline.models.cf import (
        bpr_step,
        build_cf_model,
        build_edge_index,
        make_optimizer,
        normalized_adjacency,
    )

    n_seen = train.n_seen_users
    n_nodes = n_seen + train.n_items
    model = build_cf_model(config, n_nodes)
    adjacency = normalized_adjacency(build_edge_index(train.users, train.items, n_seen), n_nodes)
    optimizer = make_optimizer(config, model.parameters())
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(len(train.users), (config.batch_size,), generator=generator)
    u = torch.as_tensor(train.users)[rows]
    i = torch.as_tensor(train.items)[rows] + n_seen
    j = torch.randint(train.n_items, (config.batch_size,), generator=generator) + n_seen

    def step() -> dict:
        bpr_step(model, adjacency, optimizer, u, i, j, config.lambda_reg)
        return {"steps_per_epoch": int(np.ceil(len(train.users) / config.batch_size))}

    return step


def _llm4rec_step(split: pd.DataFrame, sizes: dict, rng: np.random.Generator) -> Callable[[], dict]:
    from tokenrec_pipeline.models.llm4rec import TrainConfig, train_llm4rec
    from tokenrec_pipeline.pipelines.llm4rec.nodes import select_training_prompts

    train_prompts = _prompt_tables(split, rng)[0]
    items = _item_vectors(sizes["items"], rng)
    model = _llm4rec_model(items, rng)
    batch = 32
    # Without the stage's own keys (train_user_tokens, samples_per_user), as the llm4rec node hands TrainConfig
    # its block; which train table they pick does not matter here (random tokens) and the step count is set below.
    _, training = select_training_prompts(train_prompts, train_prompts, _params("llm4rec")["training"])
    base = {**training, "epochs": 1, "batch_size": batch, "patience": None, "seed": 0, "show_progress": False}

    def run(steps: int) -> float:
        start = time.perf_counter()
        train_llm4rec(model, train_prompts["prompt"], train_prompts["target_item"], items,
                      TrainConfig.from_dict({**base, "samples_per_epoch": batch * steps}),
                      histories=train_prompts["history"])
        return time.perf_counter() - start

    def step() -> dict:
        one, four = run(1), run(4)
        return {"seconds_per_step": (four - one) / 3, "batch": batch}

    return step


def _llm4rec_inference(split: pd.DataFrame, sizes: dict, rng: np.random.Generator) -> Callable[[], dict]:
    from tokenrec_pipeline.evaluation.item_index import build_item_index
    from tokenrec_pipeline.models.tokenrec import retrieve

    test = _prompt_tables(split, rng)[2]
    test = test[test["variant"] == "full"].head(128)
    items = _item_vectors(sizes["items"], rng)
    model = _llm4rec_model(items, rng).eval()
    index = build_item_index(model.items_in_space(items).numpy(), use_gpu=False)  # as the indexing stage does
    prompts, histories = list(test["prompt"]), [list(h) for h in test["history"]]
    retrieve(model, index, prompts[:8], histories[:8], 20, batch_size=8)  # warm-up

    def infer() -> dict:
        start = time.perf_counter()
        retrieve(model, index, prompts, histories, 20, batch_size=64)
        return {"ms_per_user": (time.perf_counter() - start) * 1000 / len(prompts)}

    return infer


def run_worker(stage: str, n_interactions: int, threads: int) -> dict:
    """Prepare, then time one stage at one size in this process; returns the result record."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    timed, sizes = _prepare(stage, n_interactions)
    exact_peak = _reset_peak_rss()
    start = time.perf_counter()
    extra = timed()
    seconds = time.perf_counter() - start
    record = {"stage": stage, "target": n_interactions, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
              "peak_is_stage_only": exact_peak, **sizes}
    record.update({k: v for k, v in extra.items() if not k.startswith("_")})
    return record


# ----------------------------------------------------------------------------- driver


def growth_exponent(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(size): 1 = linear, 2 = quadratic."""
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def measure(stage: str, target: int, threads: int, timeout: float) -> dict:
    """Run one stage/size in a fresh interpreter; a timeout or crash becomes a record saying so."""
    root = str(Path(__file__).resolve().parents[1])  # `-m benchmarks.cost_curves` imports from the checkout root
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "benchmarks.cost_curves", "--worker", stage,
               "--sizes", str(target), "--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"stage": stage, "target": target, "error": f"timeout > {timeout:.0f}s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"stage": stage, "target": target, "error": f"exit {done.returncode}: {tail[0][:200]}"}


def summarise(records: list[dict]) -> pd.DataFrame:
    """One row per stage: its cost (unit in ``COST``, else seconds) and peak MiB per size, and the growth
    exponents of both against the interactions after 5-core."""
    rows = []
    for stage in dict.fromkeys(r["stage"] for r in records):
        key, unit = COST.get(stage, ("seconds", "s"))
        row: dict = {"stage": stage, "unit": unit}
        x, cost, memory = [], [], []
        for record in (r for r in records if r["stage"] == stage):
            label = f"{record['target'] / 1e6:g}M"
            if "error" in record:
                row[f"{label}"], row[f"MiB {label}"] = record["error"], ""
                continue
            row[f"{label}"], row[f"MiB {label}"] = round(record[key], 4), round(record["peak_rss_mb"])
            x.append(record["interactions"])
            cost.append(record[key])
            memory.append(record["peak_rss_mb"])
        row["time exponent"] = round(growth_exponent(x, cost), 2)
        row["memory exponent"] = round(growth_exponent(x, memory), 2)
        rows.append(row)
    return pd.DataFrame(rows, dtype=object).fillna("-")  # "-": a size the stage skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000, 3_000_000],
                        help="target interactions")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epoch-max-size", type=int, default=1_000_000,
                        help="largest size for lightgcn_epoch (it grows quadratically; lightgcn_step covers all sizes)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per stage and size")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every record as JSON")
    parser.add_argument("--worker", choices=STAGES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(RESULT_MARK + json.dumps(run_worker(args.worker, args.sizes[0], args.threads)), flush=True)
        return

    from tokenrec_pipeline.reporting.tables import markdown_table

    print(f"Cost curves: sizes {args.sizes} target interactions, {args.threads} thread(s), timeout {args.timeout:.0f}s "
          "per stage and size, one subprocess each", flush=True)
    records = []
    for target in args.sizes:
        for stage in args.stages:
            if stage == "lightgcn_epoch" and target > args.epoch_max_size:
                continue
            record = measure(stage, target, args.threads, args.timeout)
            records.append(record)
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            print(f"  {json.dumps(shown)}", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(records, indent=1))
    print()
    print(markdown_table(summarise(records), floatfmt=".3f"))


if __name__ == "__main__":
    main()
