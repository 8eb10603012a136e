"""LightGCN / BPR-MF epoch and validation seconds, beside RecBole 1.2.1's LightGCN on the same data.

    python -m benchmarks.cf_speed [--interactions 200000] [--batch-size 2048]
        [--epochs 3] [--repeats 3] [--models lightgcn mf] [--before-ref COMMIT]
        [--recbole-python /tmp/recbole-venv/bin/python] [--recbole-epochs 2] [--threads 1]

Data: the project's synthetic generator at about ``--interactions`` interactions (the cost-curves
benchmark's sizing: N/20 users, N/50 items), through the ingestion + preprocessing node functions
(5-core, leave-one-out with 10% unseen users), or ``--dataset lastfm|beauty`` from the shared data
folder through the same protocol; the model trains on the seen users' train rows and validates on
their valid rows, with the stages' settings: ``cf_pretraining.lightgcn`` (``conf/base/parameters_cf_pretraining.yml``)
and ``baselines.mf`` (``conf/base/parameters_baselines.yml``).

Per model and code version, each figure is a median over ``--repeats`` interleaved measurements:

* ``epoch s`` -- one training epoch (shuffle, negative sampling, every mini-batch step):
  ``(T(1 + E epochs) - T(1 epoch)) / E`` of ``train_cf`` without validation, so set-up and the
  closing fold-in statistics cancel out.
* ``valid s`` -- one full-ranking validation of every seen user (NDCG@20 for early stopping): the
  version's own validation call on the embeddings of a 1-epoch model.

``--before-ref`` also loads the package ``src/tokenrec_pipeline`` as it is at that git commit (``git
archive`` into a temporary folder; ``models/cf.py`` before the split into ``models/cf/``, the package
after it) into this process and measures its ``tokenrec_pipeline.models.cf`` the same way, interleaved
with the current code, and prints the ratios: same process, same data, same load on the machine. The two
versions never mix: while one is measured, ``sys.modules`` holds only its own ``tokenrec_pipeline``
modules (:class:`PackageAtRef`), so even imports inside its functions resolve to its own tree.

RecBole anchor: RecBole's ``LightGCN`` (``n_layers`` 3, d 64, the same batch size, learning rate
and L2 weight, one uniform negative per positive) on exactly the same train / valid / test pairs
(RecBole "benchmark files"), timed with its own ``Trainer``: ``_train_epoch`` per epoch (its data
loader's negative sampling included) and ``evaluate`` on the validation users (full ranking). It
runs in this interpreter when ``recbole`` is importable, otherwise in ``--recbole-python``'s (a
separate virtual environment, so RecBole's pins never touch the project's); without either the
benchmark says so and prints no anchor. Threads: torch runs with ``--threads`` (1 by default, the
shared 2-core machines) in every process, RecBole's included.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.util
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

RESULT_MARK = "RECBOLE_RESULT "
PACKAGE = "tokenrec_pipeline"
# Where each model's settings are, as the stages read them: (file, top-level key).
CF_PARAMS = {"lightgcn": (Path("conf") / "base" / "parameters_cf_pretraining.yml", "cf_pretraining"),
             "mf": (Path("conf") / "base" / "parameters_baselines.yml", "baselines")}


def _project_root() -> Path:
    """The checkout this module belongs to (``benchmarks/`` -> root)."""
    return Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Code versions
# ----------------------------------------------------------------------------------------------


def _package_modules() -> dict[str, types.ModuleType]:
    """Every ``tokenrec_pipeline`` module now in ``sys.modules``."""
    return {name: module for name, module in sys.modules.items()
            if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _swap_package(modules: dict[str, types.ModuleType]) -> dict[str, types.ModuleType]:
    """Take every ``tokenrec_pipeline`` module out of ``sys.modules``, put ``modules`` in; return the ones taken."""
    taken = _package_modules()
    for name in taken:
        del sys.modules[name]
    sys.modules.update(modules)
    return taken


class PackageAtRef:
    """``src/tokenrec_pipeline`` as of git ``ref``, importable in this process beside the current package.

    ``git archive`` writes the commit's package into a temporary folder (kept until the process exits);
    :meth:`load` imports its ``tokenrec_pipeline.models.cf`` (``models/cf.py`` before the split into a
    package, ``models/cf/`` after: the same import either way) with that folder first on ``sys.path`` and no
    current ``tokenrec_pipeline`` module in ``sys.modules``. :meth:`active` swaps the two sets of modules
    around every call into the old code, so what it imports, then or later, is its own commit's.
    """

    def __init__(self, ref: str, repo: Path) -> None:
        self.ref = ref
        self.modules: dict[str, types.ModuleType] = {}
        self.root = Path(tempfile.mkdtemp(prefix="cf_speed_before_"))
        atexit.register(shutil.rmtree, self.root, True)
        archived = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref, f"src/{PACKAGE}"],
                                  capture_output=True)
        if archived.returncode != 0:
            sys.exit(f"error: --before-ref {ref!r}: git archive failed: {archived.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archived.stdout)) as tar:
            # the "data" filter (no absolute paths or links out of the folder) where this Python has it
            tar.extractall(self.root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        self.src = self.root / "src"

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The old package's modules in ``sys.modules`` (the current ones put back afterwards)."""
        current = _swap_package(self.modules)
        try:
            yield
        finally:
            self.modules = _swap_package(current)

    def load(self) -> types.ModuleType:
        """``tokenrec_pipeline.models.cf`` of the commit (exits with a message when it has none)."""
        with self.active():
            sys.path.insert(0, str(self.src))
            importlib.invalidate_caches()
            try:
                module = importlib.import_module(f"{PACKAGE}.models.cf")
            except ImportError as error:
                sys.exit(f"error: --before-ref {self.ref!r}: cannot import {PACKAGE}.models.cf of that commit "
                         f"({error}).")
            finally:
                sys.path.remove(str(self.src))
        if not Path(module.__file__).resolve().is_relative_to(self.src.resolve()):
            sys.exit(f"error: --before-ref {self.ref!r}: imported {module.__file__}, not the commit's copy.")
        return module


class CurrentPackage:
    """The code of this checkout, with the interface of :class:`PackageAtRef`."""

    def __init__(self) -> None:
        from tokenrec_pipeline.models import cf

        self.module = cf

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield

    def load(self) -> types.ModuleType:
        return self.module


# ----------------------------------------------------------------------------------------------
# Our models
# ----------------------------------------------------------------------------------------------


def cf_params(model: str) -> dict:
    """The model's YAML block as its stage reads it: ``cf_pretraining.lightgcn`` or ``baselines.mf``."""
    import yaml

    path, key = CF_PARAMS[model]
    return yaml.safe_load(_project_root().joinpath(path).read_text())[key][model]


def model_config(cf_module: types.ModuleType, model: str, batch_size: int, **overrides):
    """``cf_params(model)`` as the given module's ``CFConfig`` (the keys it knows; CPU, seed 0)."""
    params = cf_params(model)
    fields = set(cf_module.CFConfig.__dataclass_fields__)
    kwargs = {k: v for k, v in params.items() if k in fields}
    kwargs.update(model=model, batch_size=batch_size, device="cpu", seed=0, show_progress=False, **overrides)
    return cf_module.CFConfig(**kwargs)


def _timed_fit(cf_module: types.ModuleType, train, valid, config) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one ``train_cf`` call."""
    cpu, wall = time.process_time(), time.perf_counter()
    cf_module.train_cf(train, config, valid)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure_model(cf_module: types.ModuleType, model: str, data: dict, batch_size: int, epochs: int) -> dict:
    """One measurement of (epoch seconds, validation seconds) for ``model`` with ``cf_module``.

    Epoch: ``(T(1 + E epochs) - T(1 epoch)) / E`` of ``train_cf`` without validation. Validation:
    the version's own per-epoch validation call (``evaluate_inputs`` as its ``train_cf`` makes it,
    NDCG@10/20/30 of every validation user) on the embeddings of the 1-epoch model.
    """
    train = cf_module.TrainInteractions(data["users"], data["items"], data["n_seen"], data["n_items"])
    one = _timed_fit(cf_module, train, None, model_config(cf_module, model, batch_size, epochs=1))
    many = _timed_fit(cf_module, train, None, model_config(cf_module, model, batch_size, epochs=1 + epochs))
    config = model_config(cf_module, model, batch_size, epochs=1)
    result = cf_module.train_cf(train, config)
    emb = torch.cat([result.user_embeddings, result.item_embeddings])
    valid = data["valid"]
    cpu, wall = time.process_time(), time.perf_counter()
    evaluate_inputs = _evaluate_inputs(cf_module)
    evaluate_inputs(valid, user_vectors=emb[torch.as_tensor(valid.users)], item_vectors=emb[data["n_seen"]:],
                    ks=config.eval_ks, batch_size=config.eval_batch_size)
    valid_cpu, valid_wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"epoch_s": (many[0] - one[0]) / epochs, "wall_epoch_s": (many[1] - one[1]) / epochs,
            "valid_s": valid_cpu, "wall_valid_s": valid_wall}


def _evaluate_inputs(cf_module: types.ModuleType):
    """The version's full-ranking evaluator: ``evaluate_inputs`` as its ``cf`` module imports it (``models/cf.py``
    and the ``models/cf/`` package both re-export it), else from its evaluation module."""
    if hasattr(cf_module, "evaluate_inputs"):
        return cf_module.evaluate_inputs
    for name in (f"{PACKAGE}.evaluation.ranking", f"{PACKAGE}.models.evaluation"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name).evaluate_inputs
    raise AttributeError(f"{cf_module.__name__} ({cf_module.__file__}) has no evaluate_inputs.")


def one_based_best_epoch(result) -> int:
    """The selected epoch counted from 1, as every trainer counts now (``training/loop.py``); CF code from
    before that counted from 0 (its history's last ``epoch`` is ``epochs_run - 1``), so both versions'
    figures read the same."""
    last = int(result.history["epoch"].max()) if len(result.history) else int(result.epochs_run)
    return int(result.best_epoch) + (1 if last == int(result.epochs_run) - 1 else 0)


def measure_quality(cf_module: types.ModuleType, model: str, split, batch_size: int) -> dict:
    """The YAML's full training (early-stopped on valid NDCG@20, seed 0) and its test metrics.

    Returns best epoch (counted from 1 for either version), epochs run, valid NDCG@20 of the selected epoch
    and test NDCG@20 of seen users and of unseen users (fold-in), all through the given version's own code.
    """
    config = model_config(cf_module, model, batch_size)
    result = cf_module.train_cf_from_splits(split, config)
    long, _ = cf_module.evaluate_cf(result, split, split="test")
    test = long[long["metric"] == "NDCG@20"].set_index("user_group")["value"]  # long layout: one row per metric
    return {"best_epoch": one_based_best_epoch(result), "epochs_run": int(result.epochs_run),
            "valid_ndcg20": float(result.best_valid_metrics["NDCG@20"]),
            "test_seen_ndcg20": float(test.get("seen", float("nan"))),
            "test_unseen_ndcg20": float(test.get("unseen", float("nan")))}


# ----------------------------------------------------------------------------------------------
# RecBole anchor
# ----------------------------------------------------------------------------------------------


def _write_atomic(folder: Path, name: str, users: np.ndarray, items: np.ndarray) -> None:
    pairs = zip(users.tolist(), items.tolist(), strict=True)
    lines = ["user_id:token\titem_id:token"] + [f"u{u}\ti{i}" for u, i in pairs]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")


def write_recbole_dataset(folder: Path, data: dict) -> None:
    """The same train / valid / test pairs as RecBole benchmark files ``cf.{train,valid,test}.inter``."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder, "cf.train", data["users"], data["items"])
    _write_atomic(folder, "cf.valid", data["valid_users"], data["valid_items"])
    _write_atomic(folder, "cf.test", data["valid_users"], data["valid_items"])  # unused: validation only


def recbole_worker(data_dir: Path, batch_size: int, epochs: int, lr: float, reg_weight: float, threads: int) -> dict:
    """Train RecBole's LightGCN for ``epochs`` epochs on ``data_dir/cf``; seconds per epoch and per validation."""
    import logging
    import os

    torch.set_num_threads(threads)
    os.chdir(data_dir)  # RecBole's Trainer writes log_tensorboard/ into the working directory
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(model="LightGCN", dataset="cf", config_dict={
        "data_path": str(data_dir), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
        "embedding_size": 64, "n_layers": 3, "reg_weight": reg_weight, "learning_rate": lr,
        "train_batch_size": batch_size, "eval_batch_size": 4096, "epochs": epochs,
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
        "metrics": ["NDCG"], "topk": [20], "valid_metric": "NDCG@20",
        "device": "cpu", "use_gpu": False, "worker": 0, "seed": 0, "reproducibility": True,
        "show_progress": False, "checkpoint_dir": str(data_dir / "saved"), "log_wandb": False, "state": "ERROR",
    })
    init_seed(config["seed"], config["reproducibility"])
    logging.disable(logging.WARNING)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    model = LightGCN(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    epoch_cpu, epoch_wall = [], []
    for epoch in range(epochs):
        cpu, wall = time.process_time(), time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        epoch_cpu.append(time.process_time() - cpu)
        epoch_wall.append(time.perf_counter() - wall)
    cpu, wall = time.process_time(), time.perf_counter()
    result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    valid_cpu, valid_wall = time.process_time() - cpu, time.perf_counter() - wall
    import recbole

    return {"recbole": recbole.__version__, "torch": torch.__version__,
            "epoch_s": epoch_cpu, "wall_epoch_s": epoch_wall,
            "valid_s": valid_cpu, "wall_valid_s": valid_wall, "valid_ndcg20": float(result["ndcg@20"]),
            "n_users": dataset.user_num - 1, "n_items": dataset.item_num - 1, "n_train": len(train_data.dataset)}


def run_recbole(data: dict, args: argparse.Namespace, lr: float, reg_weight: float) -> dict | None:
    """RecBole's figures, in this interpreter or ``--recbole-python``'s; None (and why) when neither has it."""
    in_process = importlib.util.find_spec("recbole") is not None
    if not in_process and args.recbole_python is None:
        print("RecBole anchor: skipped -- `recbole` is not importable here and no --recbole-python was given "
              "(install recbole==1.2.1 into a separate virtual environment, see README 'Speed').", flush=True)
        return None
    with tempfile.TemporaryDirectory(prefix="cf_speed_recbole_") as tmp:
        folder = Path(tmp)
        write_recbole_dataset(folder / "cf", data)
        worker_args = [str(folder), str(args.batch_size), str(args.recbole_epochs), str(lr), str(reg_weight),
                       str(args.threads)]
        if in_process:
            return recbole_worker(folder, args.batch_size, args.recbole_epochs, lr, reg_weight, args.threads)
        command = [str(args.recbole_python), str(Path(__file__).resolve()), "--recbole-worker", *worker_args]
        done = subprocess.run(command, capture_output=True, text=True)
        marked = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if done.returncode != 0 or not marked:
            print(f"RecBole anchor: failed in {args.recbole_python} (exit {done.returncode}):\n{done.stderr[-3000:]}")
            return None
        return json.loads(marked[-1][len(RESULT_MARK):])


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


def prepare_data(n_interactions: int, dataset: str | None = None, shared_data: Path | None = None) -> tuple[dict, dict]:
    """Train pairs of the seen users, their validation inputs and the sizes: from the synthetic log,
    or from the authors' ``user_sequence.txt`` of ``dataset`` (lastfm | beauty) under ``shared_data``
    through the protocol (5-core, leave-one-out, 10% unseen users, seed 42)."""
    from tokenrec_pipeline.evaluation.ranking import eval_inputs_from_splits
    from tokenrec_pipeline.models.cf import train_interactions_from_splits

    if dataset is None:
        from benchmarks.cost_curves import run_data_stage

        split, sizes = run_data_stage(n_interactions)
    else:
        from benchmarks.cf_baselines import prepare

        split = prepare(dataset, shared_data, 0.1, 5, 42)
        sizes = {"interactions": int(len(split)), "users": int(split["user_id"].nunique()),
                 "items": int(split["item_id"].nunique())}
    train = train_interactions_from_splits(split)
    valid = eval_inputs_from_splits(split, "seen", "valid")
    data = {"split": split, "users": train.users, "items": train.items, "n_seen": train.n_seen_users,
            "n_items": train.n_items,
            "valid": valid, "valid_users": np.asarray(valid.users), "valid_items": np.asarray(valid.targets)}
    return data, sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=200_000, help="synthetic log size (before 5-core)")
    parser.add_argument("--dataset", choices=["lastfm", "beauty"], default=None,
                        help="a real dataset from --shared-data instead of the synthetic log")
    parser.add_argument("--shared-data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3, help="E: epochs per timed fit after the first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per version (median)")
    parser.add_argument("--models", nargs="+", choices=["lightgcn", "mf"], default=["lightgcn", "mf"])
    parser.add_argument("--before-ref", default=None,
                        help="also measure the CF code (models/cf.py or models/cf/) of this git commit")
    parser.add_argument("--quality", action="store_true",
                        help="also train each version to early stopping and print valid / test NDCG@20")
    parser.add_argument("--recbole-python", type=Path, default=None,
                        help="interpreter of a venv with recbole==1.2.1 (when recbole is not importable here)")
    parser.add_argument("--recbole-epochs", type=int, default=2, help="RecBole epochs to time (0: no anchor)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared 2-core machines)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    packages = {"now": CurrentPackage()}
    if args.before_ref:  # archived first: a bad ref stops the benchmark before any work
        packages[f"before ({args.before_ref[:10]})"] = PackageAtRef(args.before_ref, _project_root())
    data, sizes = prepare_data(args.interactions, args.dataset, args.shared_data)
    source = f"synthetic ~{args.interactions:,}" if args.dataset is None else args.dataset
    print(f"data: {source} -> {sizes['interactions']:,} interactions after 5-core "
          f"({sizes['users']:,} users, {sizes['items']:,} items); train pairs {len(data['users']):,} of "
          f"{data['n_seen']:,} seen users; {len(data['valid_users']):,} validation users; batch {args.batch_size}; "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}", flush=True)
    versions = {label: package.load() for label, package in packages.items()}

    rows: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for model in args.models:
            for label, module in versions.items():
                with packages[label].active():
                    m = measure_model(module, model, data, args.batch_size, args.epochs)
                rows.setdefault((model, label), []).append(m)
                print(f"  repeat {repeat + 1}: {model:<8} {label:<20} epoch {m['epoch_s']:.3f}s CPU "
                      f"({m['wall_epoch_s']:.3f}s wall), validation {m['valid_s']:.3f}s CPU "
                      f"({m['wall_valid_s']:.3f}s wall)",
                      flush=True)
    quality = {}
    if args.quality:
        for model in args.models:
            for label, module in versions.items():
                with packages[label].active():
                    q = measure_quality(module, model, data["split"], args.batch_size)
                quality[(model, label)] = q
                print(f"  quality: {model:<8} {label:<20} best epoch {q['best_epoch']} of {q['epochs_run']}, "
                      f"valid NDCG@20 {q['valid_ndcg20']:.4f}, test NDCG@20 seen {q['test_seen_ndcg20']:.4f} / "
                      f"unseen {q['test_unseen_ndcg20']:.4f}", flush=True)

    anchor = None
    if args.recbole_epochs > 0 and "lightgcn" in args.models:
        lightgcn = cf_params("lightgcn")
        anchor = run_recbole(data, args, float(lightgcn["lr"]), float(lightgcn["lambda_reg"]))

    print(f"\nmedians of {args.repeats} interleaved measurements; CPU = this process' CPU seconds (stable on a shared "
          f"machine), wall = elapsed; epoch: (T(1+{args.epochs}) - T(1)) / {args.epochs}; validation: full ranking of "
          f"{len(data['valid_users']):,} users")
    header = (f"{'model':<10} {'code':<22} {'epoch CPU s':>11} {'valid CPU s':>11} {'epoch wall s':>12} "
              f"{'valid wall s':>12}")
    if quality:
        header += f" {'best/run':>9} {'valid NDCG@20':>13} {'test seen':>9} {'test unseen':>11}"
    print(header)
    print("-" * len(header))
    medians = {}
    for (model, label), ms in rows.items():
        med = {key: statistics.median(m[key] for m in ms)
               for key in ("epoch_s", "valid_s", "wall_epoch_s", "wall_valid_s")}
        medians[(model, label)] = med
        line = (f"{model:<10} {label:<22} {med['epoch_s']:>11.3f} {med['valid_s']:>11.3f} {med['wall_epoch_s']:>12.3f} "
                f"{med['wall_valid_s']:>12.3f}")
        if quality:
            q = quality[(model, label)]
            line += (f" {str(q['best_epoch']) + '/' + str(q['epochs_run']):>9} {q['valid_ndcg20']:>13.4f} "
                     f"{q['test_seen_ndcg20']:>9.4f} {q['test_unseen_ndcg20']:>11.4f}")
        print(line)
    if anchor is not None:
        print(f"{'lightgcn':<10} {'RecBole ' + anchor['recbole']:<22} {statistics.median(anchor['epoch_s']):>11.3f} "
              f"{anchor['valid_s']:>11.3f} {statistics.median(anchor['wall_epoch_s']):>12.3f} "
              f"{anchor['wall_valid_s']:>12.3f}   (median of {len(anchor['epoch_s'])} epochs, its own process; RecBole "
              f"saw {anchor['n_users']:,} users, {anchor['n_items']:,} items, {anchor['n_train']:,} train pairs)")
    summary = []
    for model in args.models:
        now = medians[(model, "now")]
        for label in versions:
            if label != "now":
                before = medians[(model, label)]
                summary.append(f"{model} epoch CPU {before['epoch_s']:.2f}s -> {now['epoch_s']:.2f}s "
                               f"({before['epoch_s'] / now['epoch_s']:.1f}x), validation CPU "
                               f"{before['valid_s']:.2f}s -> {now['valid_s']:.2f}s "
                               f"({before['valid_s'] / now['valid_s']:.1f}x)")
        if model == "lightgcn" and anchor is not None:
            rb_epoch = statistics.median(anchor["epoch_s"])
            summary.append(f"lightgcn epoch CPU vs RecBole {rb_epoch:.2f}s: {rb_epoch / now['epoch_s']:.1f}x faster")
    print("\nSUMMARY: " + "; ".join(summary or ["no comparison requested"]), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--recbole-worker":
        folder, batch, epochs, lr, reg, threads = sys.argv[2:8]
        result = recbole_worker(Path(folder), int(batch), int(epochs), float(lr), float(reg), int(threads))
        print(RESULT_MARK + json.dumps(result), flush=True)
    else:
        main()
