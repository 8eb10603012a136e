"""Wall time of comparing the four quantizers: four ``kedro run --pipeline=full`` against one ``full`` run
followed by ``kedro run --pipeline=quantizer_sweep`` (which reuses the split, the CF models and the baselines).

    python -m benchmarks.quantizer_sweep [--config tiny|default] [--workdir DIR]

Each run is a separate ``kedro run`` process in a throw-away copy of the project (``conf/base`` + the chosen
parameters in ``conf/local``), with its own MLflow store, as a user runs it. ``tiny`` is the test suite's
configuration (``tests/conftest.py``: 120 users, 1-epoch language model, every baseline); ``default`` is
``conf/base`` unchanged. Prints one line per run and the two totals.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

QUANTIZERS = ("mq", "rqvae", "vqvae", "kmeans")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _project(folder: Path, params: dict) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf" / "base", folder / "conf" / "base")
    (folder / "conf" / "local").mkdir()
    (folder / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(params))
    (folder / "src").mkdir()
    return folder


def _kedro_run(folder: Path, *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kedro", "run", *args], cwd=folder, capture_output=True, text=True,
                            check=False, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    if result.returncode:
        raise RuntimeError(f"kedro run {' '.join(args)} failed in {folder}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("tiny", "default"), default="tiny")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the throw-away projects go (default: a temp dir)")
    args = parser.parse_args()
    if args.config == "tiny":
        sys.path.insert(0, str(PROJECT_ROOT))
        from tests.conftest import TINY as params  # the test suite's configuration
    else:
        params = {}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quantizer_sweep_benchmark_"))

    separate = {}
    for quantizer in QUANTIZERS:
        folder = _project(workdir / f"full_{quantizer}", params)
        separate[quantizer] = _kedro_run(folder, "--pipeline=full", f"--params=tokenizer.quantizer={quantizer}")
        print(f"kedro run --pipeline=full --params=tokenizer.quantizer={quantizer}: {separate[quantizer]:.0f}s",
              flush=True)
    folder = _project(workdir / "sweep", params)
    full = _kedro_run(folder, "--pipeline=full")
    print(f"kedro run --pipeline=full: {full:.0f}s", flush=True)
    sweep = _kedro_run(folder, "--pipeline=quantizer_sweep")
    print(f"kedro run --pipeline=quantizer_sweep: {sweep:.0f}s", flush=True)
    print(f"[{args.config}] four full runs: {sum(separate.values()):.0f}s; quantizer_sweep alone: {sweep:.0f}s; "
          f"full + quantizer_sweep: {full + sweep:.0f}s (workdir {workdir})")


if __name__ == "__main__":
    main()
