"""SASRec and BERT4Rec under the project's protocol on Beauty and ml-100k (and LastFM).

    python -m benchmarks.sequential_baselines [--datasets beauty ml-100k]
        [--models sasrec bert4rec] [--shared-data ../shared/data] [--unseen-fraction 0]
        [--max-seconds 600] [--set sasrec.max_length=20 bert4rec.lr=0.002 ...]

Data: the authors' ``tokenrec_processed/{Beauty,LastFM}/user_sequence.txt`` and RecBole's
``ml-100k/ml-100k.inter``, through the project's own preprocessing: implicit feedback, iterative
5-core, chronological leave-one-out, a seeded unseen-user holdout (``--unseen-fraction``; default 0
= every user seen, the setting of ``docs/BENCHMARKS.md``'s reference rows). Hyper-parameters come from
``conf/base/parameters_baselines.yml`` (override with ``--set``); training is early-stopped on the
seen users' validation NDCG@20 and capped at ``--max-seconds`` per model. Prints, per model, the
best validation HR@20 / NDCG@20, test HR/NDCG@10/20/30 of the selected epoch (seen users and,
from their histories alone, unseen users), best epoch / epochs run and wall time, plus Pop on the
same split. Every printed figure is computed in this run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from benchmarks import apply_set_overrides
from benchmarks.cf_baselines import DATASETS as SEQUENCE_DATASETS
from benchmarks.cf_baselines import prepare as prepare_sequences
from tokenrec_pipeline.data.preprocess import filter_k_core, split_leave_one_out, to_implicit_feedback
from tokenrec_pipeline.data.sources import read_recbole_inter
from tokenrec_pipeline.evaluation.ranking import metrics_wide
from tokenrec_pipeline.models.cf import evaluate_pop
from tokenrec_pipeline.models.sequential import SequentialConfig, evaluate_sequential, train_sequential_from_splits

DATASETS = (*SEQUENCE_DATASETS, "ml-100k")
MODELS = ("sasrec", "bert4rec")
METRICS = ("HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30")
PARAMS_FILE = Path("conf") / "base" / "parameters_baselines.yml"
CONFIG_FIELDS = {f.name for f in fields(SequentialConfig)}


def prepare(dataset: str, shared_data: Path, unseen_fraction: float, k_core: int, seed: int):
    """The protocol's ``interactions_split`` for one benchmark dataset."""
    if dataset != "ml-100k":
        return prepare_sequences(dataset, shared_data, unseen_fraction, k_core, seed)
    path = shared_data / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        sys.exit(f"error: {path} not found; pass --shared-data pointing at the shared data folder.")
    frame = filter_k_core(to_implicit_feedback(read_recbole_inter(path)), k_core)
    return split_leave_one_out(frame, unseen_fraction, seed)[0]


def load_configs(args: argparse.Namespace) -> dict[str, dict]:
    """Per model the SequentialConfig kwargs: YAML < ``--set model.key=value``."""
    path = args.params_file or (Path.cwd() / PARAMS_FILE)
    if not path.is_file():
        path = Path(__file__).resolve().parents[1] / PARAMS_FILE
    with open(path, encoding="utf-8") as handle:
        params = (yaml.safe_load(handle) or {}).get("baselines", {})
    configs = {m: {k: v for k, v in params.get(m, {}).items() if k in CONFIG_FIELDS} for m in MODELS}
    apply_set_overrides(configs, args.set, CONFIG_FIELDS, "sasrec.max_length=20")
    for model, cfg in configs.items():
        cfg.update(model=model, seed=args.seed, show_progress=not args.no_progress, max_train_seconds=args.max_seconds)
        if cfg.get("device") == "auto":
            cfg["device"] = None
    return configs


def run_dataset(dataset: str, args: argparse.Namespace, configs: dict[str, dict]) -> list[dict]:
    t0 = time.perf_counter()
    split = prepare(dataset, args.shared_data, args.unseen_fraction, args.k_core, args.seed)
    n_seen = int(split.loc[split["split"] == "test", "user_id"].nunique())
    print(f"\n=== {dataset}: {split['user_id'].nunique():,} users ({n_seen:,} seen), "
          f"{split['item_id'].nunique():,} items, {len(split):,} interactions; unseen fraction {args.unseen_fraction}; "
          f"prepared in {time.perf_counter() - t0:.1f}s", flush=True)
    records, rows = [], []

    def collect(name: str, long, wall: float, best: str, valid: dict) -> None:
        for r in metrics_wide(long[long["split"] == "test"]).to_dict("records"):
            rec = {"dataset": dataset, "model": name, "user_group": r["user_group"], "n_users": int(r["n_users"]),
                   **{m: float(r[m]) for m in METRICS}, "valid_HR@20": valid.get("HR@20"),
                   "valid_NDCG@20": valid.get("NDCG@20"), "best_epoch": best, "wall_s": wall}
            records.append(rec)
            cells = " ".join(f"{rec[m]:>8.4f}" for m in METRICS)
            vtxt = f"valid HR@20 {valid['HR@20']:.4f} NDCG@20 {valid['NDCG@20']:.4f}" if valid else ""
            rows.append(f"{name:<9} {r['user_group']:<7} {rec['n_users']:>6} {cells} {wall:>8.1f}s  {best:<18} {vtxt}")

    start = time.perf_counter()
    collect("pop", evaluate_pop(split, split="test")[0], time.perf_counter() - start, "-", {})
    for model in args.models:
        cfg = configs[model]
        print(f"[{dataset}] training {model}: {({k: v for k, v in cfg.items() if k != 'show_progress'})}", flush=True)
        start = time.perf_counter()
        result = train_sequential_from_splits(split, SequentialConfig(**cfg))
        long, _ = evaluate_sequential(result, split, split="test")
        wall = time.perf_counter() - start
        best = f"{result.best_epoch} / {result.epochs_run}"
        if result.epochs_run >= cfg.get("epochs", 200) or (args.max_seconds and result.fit_seconds > args.max_seconds):
            best += " (capped)"
        last = result.history.dropna(subset=["valid_NDCG@20"]).tail(2)["valid_NDCG@20"].tolist()
        print(f"[{dataset}] {model}: best epoch {result.best_epoch} of {result.epochs_run}, "
              f"fit {result.fit_seconds:.1f}s; last valid NDCG@20 {last}", flush=True)
        collect(model, long, wall, best, result.best_valid_metrics)

    header = (f"{'model':<9} {'users':<7} {'n':>6} " + " ".join(f"{m:>8}" for m in METRICS)
              + "     wall  best epoch / run")
    print(f"\n{dataset} — test (unseen users scored from their histories, no retraining)\n{header}\n"
          + "-" * len(header))
    print("\n".join(sorted(rows, key=lambda r: r.split()[1] != "seen")), flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=["beauty", "ml-100k"])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["sasrec"])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--unseen-fraction", type=float, default=0.0,
                        help="0 = all users seen (docs/BENCHMARKS.md setting)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="training time cap per model (s)")
    parser.add_argument("--params-file", type=Path, default=None, help=f"default: {PARAMS_FILE}")
    parser.add_argument("--set", nargs="*", metavar="MODEL.KEY=VALUE",
                        help="e.g. sasrec.max_length=20 sasrec.dropout=0.2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared 2-core machines)")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("tokenrec_pipeline.evaluation.ranking").setLevel(logging.WARNING)
    logging.getLogger("tokenrec_pipeline.models.sequential").setLevel(logging.DEBUG)  # one line per epoch
    configs = load_configs(args)
    start = time.perf_counter()
    records = [r for d in args.datasets for r in run_dataset(d, args, configs)]
    if args.json_out:
        args.json_out.write_text(json.dumps(records, indent=2, default=str))
    summary = "; ".join(f"{r['dataset']}/{r['model']}/{r['user_group']} HR@20 {r['HR@20']:.4f} "
                        f"NDCG@20 {r['NDCG@20']:.4f} ({r['wall_s']:.0f}s)" for r in records)
    print(f"\nSUMMARY ({time.perf_counter() - start:.0f}s, {args.threads} thread(s)): {summary}", flush=True)


if __name__ == "__main__":
    main()
