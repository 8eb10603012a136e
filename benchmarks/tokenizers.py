"""MQ vs RQ-VAE vs VQ-VAE vs K-means ID tokenizers on the authors' LastFM / Beauty sequences.

    python -m benchmarks.tokenizers [--datasets lastfm beauty]
        [--shared-data ../shared/data] [--quantizers mq rqvae vqvae kmeans]
        [--cf-epochs N | --cf-epochs beauty=40 ...] [--cache-dir DIR] [--seed 42]
        [--tokenizer-epochs N | --tokenizer-epochs beauty=N ...] [--json-out FILE]

Reads ``tokenrec_processed/<Name>/user_sequence.txt`` and applies docs/DESIGN.md's protocol with the
project's own functions (implicit feedback, iterative 5-core, chronological leave-one-out, a seeded
10% of users held out as unseen). Trains LightGCN on the train split with
``conf/base/parameters_cf_pretraining.yml``'s ``cf_pretraining.lightgcn`` values (early-stopped on
the seen users' validation NDCG@20; ``--cf-epochs`` caps the epochs, globally or per dataset) and
folds the unseen users in from their histories with ``cf_pretraining.fold_in``. With
``--cache-dir`` the seen-user, item and unseen-user vectors are stored as safetensors keyed by the
dataset, split and CF settings, and loaded instead of retraining on the next invocation.

Then, for every quantizer, fits one tokenizer on the item embeddings and one on the seen users'
embeddings with ``conf/base/parameters_tokenization.yml``'s ``tokenizer`` values, the per-side
``tokenizer.<side>.overrides`` applied on top (as the tokenization stage does), only
``quantizer`` / K / L / seed set here (K=3, L=256 by default). Prints one table per run:
collision rate, min / mean codebook utilisation, min perplexity, relative reconstruction MSE
(MSE / mean per-coordinate variance, on the vectors the tokenizer was fitted on) and fit seconds;
user rows add the collision rate of the unseen users' tokens (their fold-in vectors encoded by the
fitted user tokenizer, no refit): among the unseen users themselves, and against every user
(share of unseen users whose K-tuple any other seen or unseen user has). Every figure is computed
in the run that prints it (cached embeddings are reported as such).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from benchmarks import yaml_section
from tokenrec_pipeline.data.preprocess import filter_k_core, split_leave_one_out, to_implicit_feedback
from tokenrec_pipeline.data.sources import read_sequences
from tokenrec_pipeline.evaluation.ranking import eval_inputs_from_splits
from tokenrec_pipeline.models.cf import CFConfig, train_cf_from_splits
from tokenrec_pipeline.models.tokenizers import (
    QUANTIZERS,
    TokenizerConfig,
    collision_rate,
    fit_tokenizer,
    tokenizer_diagnostics,
    tuple_counts,
)

logger = logging.getLogger("benchmarks.tokenizers")

DATASETS = {"lastfm": "LastFM", "beauty": "Beauty"}
CONF = Path("conf") / "base"
CF_PARAMS = "parameters_cf_pretraining.yml"
TOK_PARAMS = "parameters_tokenization.yml"
SIDES = ("item", "user")
CF_FIELDS = {f.name for f in fields(CFConfig)}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def _conf_dir(explicit: Path | None) -> Path:
    """``--conf-dir``, else ``conf/base`` of the current directory, else of this checkout."""
    if explicit is not None:
        return explicit
    here = Path.cwd() / CONF
    return here if (here / TOK_PARAMS).is_file() else Path(__file__).resolve().parents[1] / CONF


def _per_dataset(values: list[str] | None, dataset: str, flag: str) -> int | None:
    """``['30']`` -> 30 for every dataset; ``['beauty=30']`` -> 30 for beauty only (None elsewhere)."""
    out = None
    for value in values or []:
        name, _, number = value.rpartition("=")
        if name and name not in DATASETS:
            sys.exit(f"error: {flag} {value!r}: dataset must be one of {sorted(DATASETS)}.")
        try:
            parsed = int(number)
        except ValueError:
            sys.exit(f"error: {flag} {value!r} must be N or DATASET=N with N an integer.")
        if parsed < 1:
            sys.exit(f"error: {flag} {value!r}: N must be >= 1.")
        if name == dataset or (not name and out is None):
            out = parsed
    return out


def cf_config(conf_dir: Path, dataset: str, args: argparse.Namespace) -> tuple[dict, str]:
    """CFConfig kwargs (``cf_pretraining.lightgcn``, epochs capped by ``--cf-epochs``) and the fold-in method."""
    params = yaml_section(conf_dir / CF_PARAMS, "cf_pretraining")
    if "lightgcn" not in params:
        sys.exit(f"error: {conf_dir / CF_PARAMS} has no cf_pretraining.lightgcn section.")
    cfg = {k: v for k, v in params["lightgcn"].items() if k in CF_FIELDS}
    cfg["model"] = "lightgcn"
    cap = _per_dataset(args.cf_epochs, dataset, "--cf-epochs")
    if cap is not None:
        cfg["epochs"] = min(int(cfg.get("epochs", cap)), cap)
    if cfg.get("device") in ("auto", ""):
        cfg["device"] = None
    cfg["seed"] = args.seed
    cfg["show_progress"] = False
    return cfg, str(params.get("fold_in", "symmetric"))


def tokenizer_config(conf_dir: Path, side: str, quantizer: str, dataset: str,
                     args: argparse.Namespace) -> TokenizerConfig:
    """YAML ``tokenizer`` values < ``tokenizer.<side>.overrides`` < quantizer / K / L / seed (/ epochs cap)."""
    params = yaml_section(conf_dir / TOK_PARAMS, "tokenizer")
    shared = {k: v for k, v in params.items() if k not in ("user", "item")}
    overrides = dict((params.get(side) or {}).get("overrides") or {})
    merged = {**shared, **overrides, "quantizer": quantizer, "n_codebooks": args.n_codebooks,
              "codebook_size": args.codebook_size, "seed": args.seed}
    cap = _per_dataset(args.tokenizer_epochs, dataset, "--tokenizer-epochs")
    if cap is not None:
        merged["epochs"] = min(int(merged.get("epochs", cap)), cap)
    return TokenizerConfig.from_dict(merged, param_prefix=f"tokenizer ({side})")


# ----------------------------------------------------------------------------------------------
# Data and CF embeddings
# ----------------------------------------------------------------------------------------------


def prepare(dataset: str, shared_data: Path, unseen_fraction: float, k_core: int, seed: int):
    """The protocol's ``interactions_split`` for one of the authors' sequence files."""
    path = shared_data / "tokenrec_processed" / DATASETS[dataset] / "user_sequence.txt"
    if not path.is_file():
        sys.exit(f"error: {path} not found; pass --shared-data pointing at the shared data folder.")
    frame = filter_k_core(to_implicit_feedback(read_sequences(path)), k_core)
    split, _, _ = split_leave_one_out(frame, unseen_fraction, seed)
    return split


def _cache_path(cache_dir: Path, dataset: str, args: argparse.Namespace, cfg: dict, fold_in: str) -> Path:
    key = {"dataset": dataset, "unseen_fraction": args.unseen_fraction, "k_core": args.k_core, "seed": args.seed,
           "fold_in": fold_in, "cf": {k: v for k, v in cfg.items() if k != "show_progress"}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_dir / f"{dataset}_lightgcn_seed{args.seed}_{digest}.safetensors"


def cf_embeddings(dataset: str, split, args: argparse.Namespace,
                  conf_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Seen-user, item and folded-in unseen-user vectors: from the cache, or LightGCN trained now."""
    from safetensors.torch import load_file, save_file

    cfg, fold_in = cf_config(conf_dir, dataset, args)
    path = _cache_path(args.cache_dir, dataset, args, cfg, fold_in) if args.cache_dir else None
    if path is not None and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
        info = json.loads(meta.get("info", "{}"))
        info["source"] = f"cache {path}"
        print(f"[{dataset}] loaded LightGCN embeddings from {path} (trained {info.get('best_epoch')} / "
              f"{info.get('epochs_run')} epochs, valid NDCG@20 {info.get('valid_ndcg20', float('nan')):.4f})",
              flush=True)
        return tensors, info

    shown = {k: v for k, v in cfg.items() if k not in ("model", "show_progress")}
    print(f"[{dataset}] training LightGCN: {shown}; fold-in '{fold_in}'", flush=True)
    result = train_cf_from_splits(split, CFConfig(**cfg))
    unseen = eval_inputs_from_splits(split, "unseen", "test")
    tensors = {
        "user_embeddings": result.user_embeddings.detach().float().contiguous(),
        "item_embeddings": result.item_embeddings.detach().float().contiguous(),
        "unseen_user_embeddings": result.fold_in_users(unseen.histories, fold_in).detach().float().contiguous(),
    }
    info = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "epochs_max": cfg["epochs"],
            "fit_seconds": result.fit_seconds, "valid_ndcg20": result.best_valid_metrics.get("NDCG@20", float("nan")),
            "fold_in": fold_in, "source": "trained"}
    print(f"[{dataset}] LightGCN: best epoch {result.best_epoch} of {result.epochs_run} (max {cfg['epochs']}), "
          f"valid NDCG@20 {info['valid_ndcg20']:.4f}, {result.fit_seconds:.1f}s", flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"info": json.dumps(info), "config": json.dumps(shown, default=str)})
        print(f"[{dataset}] cached embeddings to {path}", flush=True)
    return tensors, info


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


def unseen_collisions(fitted, seen_users: torch.Tensor, unseen_users: torch.Tensor) -> tuple[float, float]:
    """(collision rate among the unseen users' own tokens, share of unseen users whose tuple any
    other user — seen or unseen — also has). Encoding only: the tokenizer is not refitted."""
    if len(unseen_users) == 0:
        return float("nan"), float("nan")
    unseen_codes = np.asarray(fitted.encode(unseen_users))
    seen_codes = np.asarray(fitted.encode(seen_users))
    per_id, _ = tuple_counts(np.concatenate([seen_codes, unseen_codes]))
    return collision_rate(unseen_codes), float((per_id[len(seen_codes):] > 1).mean())


def run_dataset(dataset: str, args: argparse.Namespace, conf_dir: Path) -> list[dict]:
    t0 = time.perf_counter()
    split = prepare(dataset, args.shared_data, args.unseen_fraction, args.k_core, args.seed)
    n_users, n_items = split["user_id"].nunique(), split["item_id"].nunique()
    n_seen = int(split.loc[split["split"] == "test", "user_id"].nunique())
    print(f"\n=== {DATASETS[dataset]}: {n_users:,} users ({n_seen:,} seen, {n_users - n_seen:,} unseen), "
          f"{n_items:,} items, {len(split):,} interactions; prepared in {time.perf_counter() - t0:.1f}s", flush=True)
    start = time.perf_counter()
    emb, info = cf_embeddings(dataset, split, args, conf_dir)
    cf_wall = time.perf_counter() - start
    vectors = {"item": emb["item_embeddings"], "user": emb["user_embeddings"]}

    records = []
    for quantizer in args.quantizers:
        for side in SIDES:
            config = tokenizer_config(conf_dir, side, quantizer, dataset, args)
            fitted = fit_tokenizer(vectors[side], config)
            codes = fitted.encode(vectors[side])
            diag = tokenizer_diagnostics(codes, vectors[side], fitted)
            rec = {"dataset": dataset, "side": side, "quantizer": quantizer, "n_ids": int(diag["n_ids"]),
                   "collision_rate": diag["collision_rate"], "utilisation_min": diag["utilisation_min"],
                   "utilisation_mean": diag["utilisation_mean"], "perplexity_min": diag["perplexity_min"],
                   "recon_mse_relative": diag["recon_mse_relative"], "fit_seconds": diag["fit_seconds"],
                   "best_epoch": int(diag["best_epoch"]), "epochs_run": max(len(fitted.history) - 1, 0),
                   "epochs_max": config.epochs, "beta": config.beta,
                   "max_ids_per_tuple": int(diag["max_ids_per_tuple"]),
                   "unseen_collision_rate": float("nan"), "unseen_collision_vs_all": float("nan"), "n_unseen": 0}
            if side == "user":
                rec["n_unseen"] = int(len(emb["unseen_user_embeddings"]))
                rec["unseen_collision_rate"], rec["unseen_collision_vs_all"] = unseen_collisions(
                    fitted, vectors["user"], emb["unseen_user_embeddings"])
            records.append(rec)
            print(f"[{dataset}] {side:<4} {quantizer:<6} collisions {rec['collision_rate']:.4f}, util min "
                  f"{rec['utilisation_min']:.3f}, rel MSE {rec['recon_mse_relative']:.4f}, {rec['fit_seconds']:.1f}s "
                  f"(best epoch {rec['best_epoch']} of {rec['epochs_run']})", flush=True)

    print(f"\n{DATASETS[dataset]} — K={args.n_codebooks}, L={args.codebook_size}; LightGCN best epoch "
          f"{info.get('best_epoch')} of {info.get('epochs_run')} (max {info.get('epochs_max')}, {info.get('source')}; "
          f"{cf_wall:.1f}s here); user tokenizers fitted on seen users only")
    print(format_table(records))
    print(f"{DATASETS[dataset]} total {time.perf_counter() - t0:.1f}s", flush=True)
    for rec in records:
        rec["cf"] = info
    return records


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:6.2f}%"  # NaN -> "-"


def format_table(records: list[dict]) -> str:
    header = (f"{'dataset':<7} {'side':<4} {'quant':<6} {'n_ids':>6} {'collide':>8} {'util min':>8} {'util mean':>9} "
              f"{'perp min':>8} {'rel MSE':>8} {'fit s':>7} {'ep best/run':>11} {'unseen n':>8} "
              f"{'unseen col':>10} {'vs all':>8}")
    lines = [header, "-" * len(header)]
    for r in records:
        lines.append(
            f"{r['dataset']:<7} {r['side']:<4} {r['quantizer']:<6} {r['n_ids']:>6} {_pct(r['collision_rate']):>8} "
            f"{_pct(r['utilisation_min']):>8} {_pct(r['utilisation_mean']):>9} {r['perplexity_min']:>8.1f} "
            f"{r['recon_mse_relative']:>8.4f} {r['fit_seconds']:>7.1f} "
            f"{str(r['best_epoch']) + '/' + str(r['epochs_run']):>11} "
            f"{(r['n_unseen'] or '-'):>8} {_pct(r['unseen_collision_rate']):>10} "
            f"{_pct(r['unseen_collision_vs_all']):>8}")
    return "\n".join(lines)


def _best(rows: list[dict], key: str, pick, fmt) -> str:
    """'q1=q2 (value)': every quantizer whose ``key`` equals the best value (ties listed)."""
    value = pick(r[key] for r in rows)
    return "=".join(r["quantizer"] for r in rows if r[key] == value) + f" ({fmt(value).strip()})"


def summary(records: list[dict], wall: float) -> str:
    parts = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        for side in SIDES:
            rows = [r for r in records if r["dataset"] == dataset and r["side"] == side]
            if not rows:
                continue
            parts.append(f"{dataset}/{side}: fewest collisions {_best(rows, 'collision_rate', min, _pct)}, "
                         f"best min-util {_best(rows, 'utilisation_min', max, _pct)}, "
                         f"lowest rel MSE {_best(rows, 'recon_mse_relative', min, lambda v: f'{v:.3f}')}, "
                         f"fastest {_best(rows, 'fit_seconds', min, lambda v: f'{v:.1f}s')}")
        mq_item = [r for r in records if r["dataset"] == dataset and r["side"] == "item" and r["quantizer"] == "mq"]
        if mq_item:
            r = mq_item[0]
            ok = r["collision_rate"] < 0.05 and r["utilisation_min"] > 0.8
            parts.append(f"{dataset} MQ item target (<5% collisions, every codebook >80% used): "
                         f"{'MET' if ok else 'NOT MET'} ({_pct(r['collision_rate']).strip()}, "
                         f"min util {_pct(r['utilisation_min']).strip()})")
    return f"SUMMARY ({wall:.0f}s): " + "; ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["lastfm", "beauty"])
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--quantizers", nargs="+", choices=list(QUANTIZERS), default=list(QUANTIZERS))
    parser.add_argument("--cf-epochs", nargs="+", metavar="[DATASET=]N",
                        help="cap LightGCN epochs (default: the YAML's), e.g. 40 or beauty=40")
    parser.add_argument("--tokenizer-epochs", nargs="+", metavar="[DATASET=]N",
                        help="cap tokenizer epochs (default: the YAML's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="load/store LightGCN embeddings here (safetensors) instead of retraining")
    parser.add_argument("--seed", type=int, default=42, help="split, CF and tokenizer seed")
    parser.add_argument("--unseen-fraction", type=float, default=0.1)
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--n-codebooks", type=int, default=3, help="K")
    parser.add_argument("--codebook-size", type=int, default=256, help="L")
    parser.add_argument("--conf-dir", type=Path, default=None, help=f"default: {CONF}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / faiss threads (1 on the shared 2-core machines)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every record as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("tokenrec_pipeline.evaluation.ranking").setLevel(logging.WARNING)
    conf_dir = _conf_dir(args.conf_dir)
    start = time.perf_counter()
    records: list[dict] = []
    for dataset in args.datasets:
        records += run_dataset(dataset, args, conf_dir)
    wall = time.perf_counter() - start
    if len(args.datasets) > 1:
        print("\nAll datasets")
        print(format_table(records))
    if args.json_out:
        args.json_out.write_text(json.dumps(records, indent=2, default=str))
    print(f"\n{summary(records, wall)}", flush=True)


if __name__ == "__main__":
    main()
