"""How a `kedro run` interrupted at different moments ends its MLflow run (KILLED is right; FAILED, FINISHED or
RUNNING are not).

Each probe starts `kedro run --pipeline=full` on a throw-away copy of the project (tiny synthetic data), waits until
its MLflow run is RUNNING with the project's pid tag, sleeps ``delay`` seconds, sends the signal, and reads the run's
final status from the tracking store. A signal lands wherever the process happens to be (a node, an MLflow call, a
hook), so a handler that is only right most of the time shows up as a mix of outcomes over a range of delays.

    python -m benchmarks.interrupt_probe --delays 0 0.2 0.5 0.8 1 1.5 2 3 [--signal SIGTERM]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models", "07_model_output",
          "08_reporting")
TINY = {  # the test suite's tiny full run (tests/conftest.py): every stage runs, about a minute
    "ingestion": {"synthetic": {"n_users": 120, "n_items": 60, "n_groups": 4, "mean_history": 12.0}},
    "cf_pretraining": {"lightgcn": {"epochs": 4, "patience": 2}},
    "baselines": {"mf": {"epochs": 4, "patience": 2},
                  "sasrec": {"epochs": 2, "patience": 1, "hidden_size": 16, "max_length": 10},
                  "bert4rec": {"epochs": 2, "patience": 1, "hidden_size": 16, "max_length": 10}},
    "tokenizer": {"codebook_size": 8, "epochs": 3, "patience": 2, "hidden_dims": [32], "code_dim": 8},
    "prompting": {"max_prefixes_per_user": 1, "history_length": 5},
    "llm4rec": {"model": {"max_length": 48}, "training": {"epochs": 1, "batch_size": 16, "samples_per_epoch": 32,
                                                          "samples_per_user": None, "num_threads": 1}},
    "autoregressive": {"training": {"epochs": 1, "batch_size": 16, "samples_per_epoch": 32, "num_threads": 1},
                       "validation": {"max_users": 16}},
    "evaluation": {"latency_users": 16, "latency_single_users": 2},
}


def make_project(folder: Path) -> Path:
    """conf/base and pyproject of this project in ``folder``, empty data layers (the package is installed)."""
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copytree(ROOT / "conf" / "base", folder / "conf" / "base")
    (folder / "conf" / "local").mkdir(parents=True)
    (folder / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(TINY))
    (folder / "src").mkdir()
    for layer in LAYERS:
        (folder / "data" / layer).mkdir(parents=True)
    return folder


def tagged_runs(project: Path) -> dict[str, str]:
    """run_id -> status of runs with the project's pid tag (read-only sqlite: the process may still migrate it)."""
    try:
        with sqlite3.connect(f"file:{project / 'mlflow.db'}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                   "WHERE t.key = 'tokenrec.pid'").fetchall())
    except sqlite3.OperationalError:
        return {}


def probe(delay: float, signum: int, timeout: float = 180.0) -> tuple[str, int]:
    """(final status, exit code) of one run interrupted ``delay`` s after its run is RUNNING."""
    with tempfile.TemporaryDirectory(prefix="interrupt-probe-") as tmp:
        project = make_project(Path(tmp))
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
        process = subprocess.Popen([sys.executable, "-m", "kedro", "run", "--pipelines=full"], cwd=project, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while not (running := [r for r, s in tagged_runs(project).items() if s == "RUNNING"]):
                if time.monotonic() > deadline or process.poll() is not None:
                    return "never RUNNING", process.poll() or 0
                time.sleep(0.05)
            time.sleep(delay)
            process.send_signal(signum)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=60)
        return tagged_runs(project).get(running[0], "missing"), code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0, 0.2, 0.5, 0.8, 1, 1.5, 2, 3],
                        help="seconds between the run being RUNNING and the signal")
    parser.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM"])
    args = parser.parse_args(argv)
    signum = getattr(signal, args.signal)
    outcomes = Counter()
    for delay in args.delays:
        status, code = probe(delay, signum)
        outcomes[status] += 1
        print(f"{args.signal} after {delay:4.1f} s: run {status}, exit code {code}", flush=True)
    summary = ", ".join(f"{status} {n}" for status, n in outcomes.most_common())
    print(f"SUMMARY {args.signal}: {len(args.delays)} interrupted runs -> {summary}")


if __name__ == "__main__":
    main()
