"""Pop, BPR-MF and LightGCN under the project's protocol on the authors' LastFM / Beauty sequences.

    python -m benchmarks.cf_baselines [--datasets lastfm beauty]
        [--shared-data ../shared/data] [--unseen-fraction 0.1] [--epochs N] [--lr X]
        [--lambda-reg X] [--batch-size N] [--patience N] [--set mf.lr=0.005 ...]

Reads ``tokenrec_processed/<Name>/user_sequence.txt`` and applies docs/DESIGN.md's protocol with the
project's own functions: implicit feedback, iterative 5-core, chronological leave-one-out with a
seeded unseen-user holdout (``--unseen-fraction``, default 10%; ``0`` = all users seen, the setting
of docs/BENCHMARKS.md). Trains MF with ``baselines.mf`` (``conf/base/parameters_baselines.yml``) and
LightGCN with ``cf_pretraining.lightgcn`` (``conf/base/parameters_cf_pretraining.yml``; unseen users are
folded in with its ``cf_pretraining.fold_in``), any of them overridable here, early-stopped on the seen
users' validation NDCG@20, and prints test HR/NDCG@10/20/30 of the selected epoch for seen users and,
through fold-in, for unseen users, with wall time, best epoch and epochs run per model. Every printed
figure is computed in this run.
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

from benchmarks import apply_set_overrides, yaml_section
from tokenrec_pipeline.data.preprocess import filter_k_core, split_leave_one_out, to_implicit_feedback
from tokenrec_pipeline.data.sources import read_sequences
from tokenrec_pipeline.evaluation.ranking import metrics_wide
from tokenrec_pipeline.models.cf import CFConfig, evaluate_cf, evaluate_pop, train_cf_from_splits

DATASETS = {"lastfm": "LastFM", "beauty": "Beauty"}
METRICS = ("HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30")
CONF = Path("conf") / "base"
# Where each model's settings are: (file under the conf folder, top-level key, key of the model's block).
MODEL_PARAMS = {"mf": ("parameters_baselines.yml", "baselines", "mf"),
                "lightgcn": ("parameters_cf_pretraining.yml", "cf_pretraining", "lightgcn")}
FOLD_IN_PARAMS = ("parameters_cf_pretraining.yml", "cf_pretraining", "fold_in")
CF_FIELDS = {f.name: f.type for f in fields(CFConfig)}
SHARED_OVERRIDES = ("epochs", "lr", "lambda_reg", "batch_size", "patience", "eval_every", "embedding_dim",
                    "num_layers", "optimizer", "weight_decay", "device")


def _default_conf_dir() -> Path:
    """``conf/base`` of the current directory, else of this checkout."""
    here = Path.cwd() / CONF
    if (here / MODEL_PARAMS["lightgcn"][0]).is_file():
        return here
    return Path(__file__).resolve().parents[1] / CONF


def load_model_configs(args: argparse.Namespace) -> tuple[dict[str, dict], str]:
    """Per model (``mf``, ``lightgcn``) the CFConfig kwargs: YAML defaults < shared flags < ``--set``.

    ``baselines.mf`` (``parameters_baselines.yml``) and ``cf_pretraining.lightgcn`` (``parameters_cf_pretraining.yml``),
    as the ``baselines`` and ``cf_pretraining`` stages read them; the fold-in rule is ``cf_pretraining.fold_in``."""
    conf_dir = args.conf_dir or _default_conf_dir()
    file, key, _ = FOLD_IN_PARAMS
    fold_in = args.fold_in or yaml_section(conf_dir / file, key).get("fold_in", "symmetric")
    configs = {}
    for model, (file, key, block) in MODEL_PARAMS.items():
        params = yaml_section(conf_dir / file, key)
        if not isinstance(params.get(block), dict):
            sys.exit(f"error: {conf_dir / file} has no {key}.{block} section.")
        cfg = {k: v for k, v in params[block].items() if k in CF_FIELDS}
        for name in SHARED_OVERRIDES:
            value = getattr(args, name, None)
            if value is not None:
                cfg[name] = value
        cfg["model"] = model
        configs[model] = cfg
    apply_set_overrides(configs, args.set, CF_FIELDS, "lightgcn.lr=0.005")
    for cfg in configs.values():
        if cfg.get("device") == "auto":
            cfg["device"] = None
        cfg["seed"] = args.seed
        cfg["show_progress"] = not args.no_progress
    return configs, fold_in


def prepare(dataset: str, shared_data: Path, unseen_fraction: float, k_core: int, seed: int):
    """The protocol's ``interactions_split`` for one of the authors' sequence files."""
    path = shared_data / "tokenrec_processed" / DATASETS[dataset] / "user_sequence.txt"
    if not path.is_file():
        sys.exit(f"error: {path} not found; pass --shared-data pointing at the shared data folder.")
    frame = read_sequences(path)
    frame = filter_k_core(to_implicit_feedback(frame), k_core)
    split, _, _ = split_leave_one_out(frame, unseen_fraction, seed)
    return split


def _fmt_row(name: str, group: str, n_users: int, metrics: dict, extra: str) -> str:
    cells = " ".join(f"{metrics[m]:>8.4f}" for m in METRICS)
    return f"{name:<9} {group:<7} {n_users:>6} {cells}  {extra}"


def run_dataset(dataset: str, args: argparse.Namespace, configs: dict[str, dict], fold_in: str) -> list[dict]:
    """Prepare, train, evaluate; print the table; return one record per (model, user group)."""
    t0 = time.perf_counter()
    split = prepare(dataset, args.shared_data, args.unseen_fraction, args.k_core, args.seed)
    counts = split["split"].value_counts()
    n_users, n_items = split["user_id"].nunique(), split["item_id"].nunique()
    n_seen = int(split.loc[split["split"] == "test", "user_id"].nunique())
    print(f"\n=== {DATASETS[dataset]}: {n_users:,} users ({n_seen:,} seen, {n_users - n_seen:,} unseen), "
          f"{n_items:,} items, "
          f"{len(split):,} interactions (train {counts.get('train', 0):,}); unseen fraction {args.unseen_fraction}, "
          f"{args.k_core}-core, seed {args.seed}; prepared in {time.perf_counter() - t0:.1f}s", flush=True)

    records: list[dict] = []
    rows: list[str] = []

    def collect(name: str, long, wall: float, best: str, cfg: dict | None, valid_ndcg: float | None) -> None:
        wide = metrics_wide(long[long["split"] == "test"])
        for r in wide.to_dict("records"):
            rec = {"dataset": dataset, "unseen_fraction": args.unseen_fraction, "model": name,
                   "user_group": r["user_group"], "n_users": int(r["n_users"]), **{m: float(r[m]) for m in METRICS},
                   "wall_s": wall, "best_epoch": best, "valid_NDCG@20": valid_ndcg, "config": cfg}
            records.append(rec)
            extra = f"{wall:>7.1f}s  {best}"
            if valid_ndcg is not None:
                extra += f"  (valid NDCG@20 {valid_ndcg:.4f})"
            rows.append(_fmt_row(name, r["user_group"], rec["n_users"], rec, extra))

    if "pop" in args.models:
        start = time.perf_counter()
        long, _ = evaluate_pop(split, split="test")
        collect("Pop", long, time.perf_counter() - start, "-", None, None)
        print(f"[{dataset}] Pop done in {time.perf_counter() - start:.1f}s", flush=True)

    for model, label in (("mf", "BPR-MF"), ("lightgcn", "LightGCN")):
        if model not in args.models:
            continue
        cfg = configs[model]
        shown = {k: v for k, v in cfg.items() if k not in ("model", "show_progress")}
        print(f"[{dataset}] training {label}: {shown}", flush=True)
        start = time.perf_counter()
        result = train_cf_from_splits(split, CFConfig(**cfg))
        long, _ = evaluate_cf(result, split, split="test", fold_in_method=fold_in, model=model)
        wall = time.perf_counter() - start
        best = f"{result.best_epoch} / {result.epochs_run}"
        if result.epochs_run >= cfg["epochs"]:
            best += " (capped)"  # early stopping did not trigger: more epochs may help
        valid = result.best_valid_metrics.get("NDCG@20")
        print(f"[{dataset}] {label}: best epoch {result.best_epoch} of {result.epochs_run}, valid NDCG@20 {valid:.4f}, "
              f"fit {result.fit_seconds:.1f}s, total {wall:.1f}s", flush=True)
        collect(label, long, wall, best, shown, valid)

    header = (f"{'model':<9} {'users':<7} {'n':>6} " + " ".join(f"{m:>8}" for m in METRICS)
              + "  wall     best epoch / run")
    print(f"\n{DATASETS[dataset]} — test, unseen fraction {args.unseen_fraction} "
          f"(unseen users: fold-in '{fold_in}' from their history, no retraining)")
    print(header)
    print("-" * len(header))
    for row in sorted(rows, key=lambda r: r.split()[1] != "seen"):
        print(row)
    print(f"{DATASETS[dataset]} total {time.perf_counter() - t0:.1f}s", flush=True)
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["lastfm", "beauty"])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--unseen-fraction", type=float, default=0.1,
                        help="0 = all users seen (docs/BENCHMARKS.md setting)")
    parser.add_argument("--seed", type=int, default=42, help="split and training seed")
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=["pop", "mf", "lightgcn"], default=["pop", "mf", "lightgcn"])
    parser.add_argument("--conf-dir", type=Path, default=None,
                        help=f"folder of {MODEL_PARAMS['mf'][0]} (baselines.mf) and {MODEL_PARAMS['lightgcn'][0]} "
                             f"(cf_pretraining.lightgcn, cf_pretraining.fold_in); default: {CONF}")
    parser.add_argument("--fold-in", choices=["symmetric", "mean"], default=None,
                        help="default: cf_pretraining.fold_in")
    group = parser.add_argument_group("overrides for both MF and LightGCN (default: the YAML's values)")
    group.add_argument("--epochs", type=int)
    group.add_argument("--lr", type=float)
    group.add_argument("--lambda-reg", type=float)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--patience", type=int)
    group.add_argument("--eval-every", type=int)
    group.add_argument("--embedding-dim", type=int)
    group.add_argument("--num-layers", type=int)
    group.add_argument("--optimizer", choices=["adam", "adamw"])
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--device")
    parser.add_argument("--set", nargs="*", metavar="MODEL.KEY=VALUE",
                        help="per-model override, e.g. mf.lr=0.005 lightgcn.epochs=40")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared 2-core machines)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every record as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("tokenrec_pipeline.evaluation.ranking").setLevel(logging.WARNING)  # one line per group: noisy
    configs, fold_in = load_model_configs(args)
    start = time.perf_counter()
    records: list[dict] = []
    for dataset in args.datasets:
        records += run_dataset(dataset, args, configs, fold_in)
    if args.json_out:
        args.json_out.write_text(json.dumps(records, indent=2, default=str))
    parts = [f"{r['dataset']}/{r['model']}/{r['user_group']} HR@20 {r['HR@20']:.4f} NDCG@20 {r['NDCG@20']:.4f} "
             f"({r['wall_s']:.0f}s)" for r in records]
    print(f"\nSUMMARY (unseen fraction {args.unseen_fraction}, {time.perf_counter() - start:.0f}s): "
          + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
