"""How long an ID tokenizer takes to fit, and what it gives: before / after on the same vectors.

    python -m benchmarks.tokenizer_speed --vectors FILE.safetensors
        [--keys item_embeddings user_embeddings] [--quantizer mq] [--before-ref COMMIT]
        [--set batch_size=1024 ...] [--threads 1]
    python -m benchmarks.tokenizer_speed --make-synthetic-vectors OUT.safetensors
        [--synthetic-interactions 20000] [--cf-epochs 200]

Vectors: a safetensors file of CF embeddings, e.g. the LightGCN vectors the tokenizer benchmark
caches (``python -m benchmarks.tokenizers --datasets beauty --cache-dir DIR``
writes ``user_embeddings`` / ``item_embeddings`` of Amazon Beauty there), or the vectors of a
LightGCN trained on a synthetic log of ``--synthetic-interactions`` interactions
(``--make-synthetic-vectors``: the cost-curves sizing, N/20 users and N/50 items, so 20,000 is the
project's default dataset; ingestion + preprocessing nodes, LightGCN with
``parameters_cf_pretraining.yml``'s settings capped at ``--cf-epochs``, early-stopped on valid).

Per key, the tokenizer of the matching side (``item_embeddings`` -> ``tokenizer.item.overrides``,
``*user*`` -> ``tokenizer.user.overrides``) is fitted with ``conf/base/parameters_tokenization.yml``
(``--set`` overrides any key), and the benchmark prints fit seconds (wall and process CPU), epochs
(best / run), optimiser steps, collision rate, min codebook utilisation and the relative
reconstruction MSE (MSE / mean per-coordinate variance) of every id's tokens.

``--before-ref`` also fits with ``models/tokenizers/training.py`` and ``parameters_tokenization.yml``
as they are at that git commit (loaded with ``git show`` into this process, the rest of the
package as it is now), on the same vectors, one after the other in this process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import yaml

PACKAGE = "tokenrec_pipeline.models.tokenizers"
TOK_PARAMS = "conf/base/parameters_tokenization.yml"


def _project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _git_show(ref: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(_project_root()), "show", f"{ref}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def load_training_at_ref(ref: str) -> types.ModuleType:
    """``models/tokenizers/training.py`` at ``ref`` as a module of the current package (its relative
    imports resolve to today's ``config`` / ``modules`` / ``diagnostics``)."""
    import importlib

    importlib.import_module(PACKAGE)
    name = f"{PACKAGE}._training_at_{ref[:10]}"
    module = types.ModuleType(name)
    module.__package__ = PACKAGE
    module.__file__ = f"{ref}:training.py"
    sys.modules[name] = module
    exec(compile(_git_show(ref, "src/tokenrec_pipeline/models/tokenizers/training.py"), module.__file__, "exec"),
         module.__dict__)
    return module


def tokenizer_params(yaml_text: str, side: str, overrides: dict) -> dict:
    """``tokenizer`` values < ``tokenizer.<side>.overrides`` < ``overrides`` (as the tokenization stage merges)."""
    params = yaml.safe_load(yaml_text)["tokenizer"]
    shared = {k: v for k, v in params.items() if k not in ("user", "item")}
    return {**shared, **((params.get(side) or {}).get("overrides") or {}), **overrides}


def fit_and_report(fit_tokenizer, vectors, params: dict) -> dict:
    """Fit once; the diagnostics of every id's tokens and the fit's cost."""
    from tokenrec_pipeline.models.tokenizers import TokenizerConfig, tokenizer_diagnostics

    config = TokenizerConfig.from_dict(params)
    cpu, wall = time.process_time(), time.perf_counter()
    fitted = fit_tokenizer(vectors, config)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    diag = tokenizer_diagnostics(fitted.encode(vectors), vectors, fitted)
    epochs_run = max(len(fitted.history) - 1, 0)
    steps = epochs_run * -(-fitted.n_train // config.batch_size)
    return {"wall_s": wall, "cpu_s": cpu, "best_epoch": fitted.best_epoch, "epochs_run": epochs_run, "steps": steps,
            "batch_size": config.batch_size, "lr": config.lr, "patience": config.patience,
            "collision_rate": float(diag["collision_rate"]), "utilisation_min": float(diag["utilisation_min"]),
            "recon_mse_relative": float(diag["recon_mse_relative"])}


def make_synthetic_vectors(out: Path, n_interactions: int, cf_epochs: int) -> None:
    """LightGCN user / item vectors of a synthetic log of about ``n_interactions`` interactions."""
    from dataclasses import fields

    from safetensors.torch import save_file

    from benchmarks.cost_curves import run_data_stage
    from tokenrec_pipeline.models.cf import CFConfig, train_cf_from_splits

    split, sizes = run_data_stage(n_interactions)
    params = yaml.safe_load((_project_root() / "conf/base/parameters_cf_pretraining.yml").read_text())
    known = {f.name for f in fields(CFConfig)}
    cfg = {k: v for k, v in params["cf_pretraining"]["lightgcn"].items() if k in known}
    cfg.update(epochs=min(int(cfg["epochs"]), cf_epochs), device=None, seed=42, show_progress=False)
    start = time.perf_counter()
    result = train_cf_from_splits(split, CFConfig(**cfg))
    print(f"synthetic log: {sizes}; LightGCN best epoch {result.best_epoch} of {result.epochs_run}, valid NDCG@20 "
          f"{result.best_valid_metrics.get('NDCG@20', float('nan')):.4f}, {time.perf_counter() - start:.0f}s",
          flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"user_embeddings": result.user_embeddings.contiguous(),
               "item_embeddings": result.item_embeddings.contiguous()}, str(out),
              metadata={"source": f"synthetic ~{n_interactions} interactions", "sizes": str(sizes)})
    print(f"wrote {out}: user_embeddings {tuple(result.user_embeddings.shape)}, item_embeddings "
          f"{tuple(result.item_embeddings.shape)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, help="safetensors file of CF embeddings")
    parser.add_argument("--keys", nargs="+", default=["item_embeddings"], help="tensors of --vectors to tokenise")
    parser.add_argument("--quantizer", default="mq")
    parser.add_argument("--before-ref", default=None, help="also fit with training.py + YAML at this git commit")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override tokenizer parameters (now)")
    parser.add_argument("--versions", nargs="+", choices=["now", "before"], default=["now", "before"],
                        help="which code to fit with (before: needs --before-ref)")
    parser.add_argument("--threads", type=int, default=1, help="torch / faiss threads (1: the shared 2-core machines)")
    parser.add_argument("--make-synthetic-vectors", type=Path, default=None, metavar="OUT")
    parser.add_argument("--synthetic-interactions", type=int, default=20_000)
    parser.add_argument("--cf-epochs", type=int, default=200)
    args = parser.parse_args(argv)

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.make_synthetic_vectors:
        make_synthetic_vectors(args.make_synthetic_vectors, args.synthetic_interactions, args.cf_epochs)
        return
    if args.vectors is None:
        parser.error("--vectors (or --make-synthetic-vectors) is required")
    from safetensors.torch import load_file

    from tokenrec_pipeline.models.tokenizers import fit_tokenizer

    tensors = load_file(str(args.vectors))
    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        overrides[key] = yaml.safe_load(raw)
    versions = {}
    if "now" in args.versions:
        versions["now"] = (fit_tokenizer, (_project_root() / TOK_PARAMS).read_text(), overrides)
    if args.before_ref and "before" in args.versions:
        before = load_training_at_ref(args.before_ref)
        versions[f"before {args.before_ref[:10]}"] = (before.fit_tokenizer, _git_show(args.before_ref, TOK_PARAMS), {})

    records = []
    for key in args.keys:
        vectors = tensors[key].float()
        side = "user" if "user" in key else "item"
        for label, (fit, yaml_text, extra) in versions.items():
            params = tokenizer_params(yaml_text, side, {"quantizer": args.quantizer, "device": "cpu", **extra})
            rec = {"key": key, "n": int(vectors.shape[0]), "code": label, **fit_and_report(fit, vectors, params)}
            records.append(rec)
            print(f"  {key} ({rec['n']:,} x {vectors.shape[1]}) {label}: {rec['wall_s']:.1f}s wall, "
                  f"{rec['cpu_s']:.1f}s CPU, "
                  f"epochs {rec['best_epoch']}/{rec['epochs_run']}, collisions {rec['collision_rate']:.4f}, "
                  f"rel MSE {rec['recon_mse_relative']:.4f}", flush=True)

    header = (f"{'vectors':<24} {'n':>6} {'code':<18} {'batch':>5} {'lr':>7} {'pat':>4} {'wall s':>7} {'CPU s':>7} "
              f"{'ep best/run':>11} {'steps':>6} {'collide':>8} {'util min':>8} {'rel MSE':>8}")
    print(f"\n{args.quantizer} tokenizer fits on {args.vectors} ({torch.get_num_threads()} thread(s))")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['key']:<24} {r['n']:>6} {r['code']:<18} {r['batch_size']:>5} {r['lr']:>7.4g} {r['patience']:>4} "
              f"{r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {str(r['best_epoch']) + '/' + str(r['epochs_run']):>11} "
              f"{r['steps']:>6} {100 * r['collision_rate']:>7.2f}% {100 * r['utilisation_min']:>7.1f}% "
              f"{r['recon_mse_relative']:>8.4f}")


if __name__ == "__main__":
    main()
