"""LLM4Rec training as one job that runs in-process or as a PyTorch DDP job started by ``torchrun``.

Why a separate process tree: a DDP job started inside a Kedro node would re-run the whole ``kedro run`` once
per process. Instead the llm4rec node writes the job's inputs to a work folder (:func:`write_job`), starts
``torchrun`` as a subprocess running this module (:func:`launch_workers`), waits, and loads rank 0's
checkpoint back through the catalog's load path (:func:`train_distributed`). On a cluster, start the same
entry point yourself on every node (the node logs the command)::

    torchrun --nnodes N --node_rank R --nproc_per_node P --rdzv_backend c10d --rdzv_endpoint HOST:PORT \\
        -m tokenrec_pipeline.training.distributed WORK_DIR

The training code is the same either way: :func:`fit_llm4rec` builds the model and calls
:func:`~tokenrec_pipeline.models.llm4rec.train_llm4rec`, which shards batches and wraps the model in
``DistributedDataParallel`` when asked to (``distributed=True``); validation is sharded over ranks and the
per-user counts gathered to rank 0 (:func:`sharded_validation`). Only rank 0 logs epoch records to MLflow
(into the parent ``kedro run``'s run, whose id travels in the job file) and writes the checkpoint, into the
work folder -- never into the catalog, so a failed job leaves the catalog's model untouched.

Work folder layout: ``job.json`` (token vocabularies, model/training/launch settings, MLflow run),
``train_prompts.parquet``, ``valid_prompts.parquet``, ``tensors.safetensors`` (item vectors and token
codeword vectors), ``user_tokenizer/`` (when the head decodes user codes); written by rank 0: ``history.csv``,
``model/`` (``LLM4Rec.save_pretrained``); written by a failing rank: ``errors/rank<R>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.elastic.multiprocessing.errors import record

from tokenrec_pipeline.core.params import dataclass_from_dict, resolve_device
from tokenrec_pipeline.evaluation.ranking import expected_hit_rate, expected_ndcg
from tokenrec_pipeline.models.llm4rec import (
    LLM4Rec,
    LLM4RecConfig,
    TrainConfig,
    build_llm4rec,
    load_llm4rec,
    train_llm4rec,
)
from tokenrec_pipeline.models.tokenizers import FittedTokenizer, load_tokenizer
from tokenrec_pipeline.models.tokenrec import evaluate_prompts
from tokenrec_pipeline.reporting.tables import history_to_mlflow
from tokenrec_pipeline.training.engine import ProcessGroup, TrainResult, check_global_batch

logger = logging.getLogger(__name__)

ENTRY_MODULE = "tokenrec_pipeline.training.distributed"
JOB_FILE = "job.json"
TENSORS_FILE = "tensors.safetensors"
TRAIN_FILE = "train_prompts.parquet"
VALID_FILE = "valid_prompts.parquet"
HISTORY_FILE = "history.csv"
MODEL_DIR = "model"
ERRORS_DIR = "errors"
USER_TOKENIZER_DIR = "user_tokenizer"
CURVES_PREFIX = "train.llm4rec"
"""MLflow name prefix of the per-epoch training records (same names in-process and distributed)."""

PLAIN = {"markup": False}
"""Logging ``extra`` for text we do not control: rich's handler (Kedro's default) would read ``[/...]`` in
worker output as markup and fail."""

TRAIN_COLUMNS = ("prompt", "target_item", "history")
VALID_COLUMNS = ("prompt", "user_id", "target_item", "history")


# --------------------------------------------------------------------------------------------------------------
# The job and the one training function
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LLM4RecJob:
    """Everything LLM4Rec training reads.

    Attributes:
        train_prompts: Columns ``prompt``, ``target_item``, ``history`` (item ids, kept out of negatives).
        valid_prompts: Columns ``prompt``, ``user_id``, ``target_item``, ``history`` (excluded from ranking).
        item_vectors: (I, d) item CF embeddings.
        user_tokens, item_tokens: ID token vocabularies.
        user_token_vectors, item_token_vectors: Their codeword vectors (token embedding initialisation).
        model_config, train_config: Architecture and training parameters.
        device: ``None``/"auto" (CUDA when present), "cpu", "cuda", ...
        user_tokenizer: The fitted user tokenizer (the "residual_user" head decodes user codes with it).
    """

    train_prompts: pd.DataFrame
    valid_prompts: pd.DataFrame
    item_vectors: torch.Tensor
    user_tokens: list[str]
    item_tokens: list[str]
    user_token_vectors: torch.Tensor
    item_token_vectors: torch.Tensor
    model_config: LLM4RecConfig
    train_config: TrainConfig
    device: str | None = None
    user_tokenizer: FittedTokenizer | None = None


def sharded_validation(
    valid_prompts: pd.DataFrame, item_vectors: torch.Tensor, distributed: bool = False
) -> Callable[[LLM4Rec], dict[str, float]]:
    """A ``validate_fn`` giving ``{"valid_HR@K": ..., "valid_NDCG@K": ...}`` (K = 10, 20, 30) on the validation prompts.

    Distributed, rank r evaluates rows ``r, r + W, ...`` and rank 0 gathers every rank's per-user tie-aware
    counts and averages them -- the same numbers as one process evaluating every row; the other ranks
    return ``{}`` (the training loop broadcasts rank 0's result).
    """

    def validate(model: LLM4Rec) -> dict[str, float]:
        group = ProcessGroup.current(model.device) if distributed else ProcessGroup()
        shard = valid_prompts.iloc[group.rank :: group.world_size]
        if len(shard):
            result = evaluate_prompts(model, shard, model.items_in_space(item_vectors))
            counts, ks = (result.n_greater, result.n_tied), result.ks
        else:  # fewer validation prompts than ranks
            counts, ks = (np.zeros(0), np.zeros(0)), ()
        gathered = group.gather((counts, ks))
        if gathered is None:
            return {}
        n_greater = np.concatenate([part[0][0] for part in gathered])
        n_tied = np.concatenate([part[0][1] for part in gathered])
        cutoffs = next((part[1] for part in gathered if part[1]), None)
        if cutoffs is None:
            raise ValueError("valid_prompts is empty: no validation prompt to select the LLM4Rec epoch on; check the "
                             "split (e.g. preprocessing.temporal_cutoffs leave no validation window).")
        metrics = {}
        for k in cutoffs:
            metrics[f"valid_HR@{k}"] = float(expected_hit_rate(n_greater, n_tied, k).mean())
            metrics[f"valid_NDCG@{k}"] = float(expected_ndcg(n_greater, n_tied, k).mean())
        return metrics

    return validate


def fit_llm4rec(
    job: LLM4RecJob,
    distributed: bool = False,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> tuple[LLM4Rec, TrainResult]:
    """Build LLM4Rec (backbone + ID tokens + head) and train it, selecting the epoch on validation.

    The single training function of the project: the llm4rec node calls it in-process, every DDP worker
    calls it with ``distributed=True`` (same seed on every rank, so every rank builds the same model).
    """
    model = build_llm4rec(
        job.model_config,
        job.user_tokens,
        job.item_tokens,
        job.user_token_vectors,
        job.item_token_vectors,
        device=job.device,
        user_tokenizer=job.user_tokenizer,
        item_vectors=job.item_vectors,
    )
    train = job.train_prompts
    result = train_llm4rec(
        model,
        list(train["prompt"]),
        train["target_item"].to_numpy(),
        job.item_vectors,
        job.train_config,
        histories=[np.asarray(h) for h in train["history"]],
        validate_fn=sharded_validation(job.valid_prompts, job.item_vectors, distributed),
        on_epoch_end=on_epoch_end,
        distributed=distributed,
    )
    return model, result


# --------------------------------------------------------------------------------------------------------------
# Launch settings and the work folder
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DistributedSettings:
    """The ``llm4rec.distributed`` parameters.

    Attributes:
        enabled: Train with DDP through ``torchrun`` instead of in the Kedro process.
        launcher: "torchrun" (the only launcher: ``python -m torch.distributed.run``).
        nproc_per_node: Worker processes on this machine (one per GPU; on CPU, cores / threads per worker).
        nnodes: Machines. Above 1 this machine runs node 0 and waits at ``rdzv_endpoint`` for the others,
            which must see ``work_dir`` (shared storage) and run the logged ``torchrun`` command.
        backend: "auto" (nccl on CUDA, gloo on CPU), "nccl" or "gloo".
        rdzv_endpoint: ``HOST:PORT`` of the c10d rendezvous (required when ``nnodes > 1``).
        work_dir: Job folder (``None``: a fresh temporary folder, deleted after success).
    """

    enabled: bool = False
    launcher: str = "torchrun"
    nproc_per_node: int = 2
    nnodes: int = 1
    backend: str = "auto"
    rdzv_endpoint: str | None = None
    work_dir: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DistributedSettings:
        """Build from the parameters, rejecting unknown keys and impossible values."""
        settings = dataclass_from_dict(cls, values, "llm4rec distributed")
        if settings.launcher != "torchrun":
            raise ValueError(f"llm4rec.distributed.launcher must be 'torchrun', got {settings.launcher!r}.")
        if settings.backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"llm4rec.distributed.backend must be auto, nccl or gloo, got {settings.backend!r}.")
        if int(settings.nproc_per_node) < 1 or int(settings.nnodes) < 1:
            raise ValueError("llm4rec.distributed.nproc_per_node and nnodes must be at least 1.")
        if int(settings.nnodes) > 1 and not settings.rdzv_endpoint:
            raise ValueError("llm4rec.distributed.rdzv_endpoint (HOST:PORT) is required when nnodes > 1.")
        return settings


def write_job(
    work_dir: str | os.PathLike[str],
    job: LLM4RecJob,
    backend: str = "auto",
    mlflow_run_id: str | None = None,
    mlflow_tracking_uri: str | None = None,
    curves_prefix: str = CURVES_PREFIX,
) -> Path:
    """Write ``job`` (and where rank 0 logs to MLflow) to ``work_dir`` for the workers; returns the folder.

    Outputs of an earlier job in the same folder (checkpoint, history, error files) are removed first, so
    they can never be mistaken for this job's.
    """
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (MODEL_DIR, ERRORS_DIR, USER_TOKENIZER_DIR):
        shutil.rmtree(folder / stale, ignore_errors=True)
    (folder / HISTORY_FILE).unlink(missing_ok=True)
    for frame, columns, name in ((job.train_prompts, TRAIN_COLUMNS, TRAIN_FILE),
                                 (job.valid_prompts, VALID_COLUMNS, VALID_FILE)):
        missing = sorted(set(columns) - set(frame.columns))
        if missing:
            raise ValueError(f"{name.removesuffix('.parquet')} lacks column(s) {missing}.")
        table = frame[list(columns)].reset_index(drop=True)
        table["history"] = [np.asarray(h, dtype=np.int64) for h in table["history"]]
        table.to_parquet(folder / name, index=False)
    tensors = {
        "item_vectors": torch.as_tensor(job.item_vectors).float(),
        "user_token_vectors": torch.as_tensor(job.user_token_vectors).float(),
        "item_token_vectors": torch.as_tensor(job.item_token_vectors).float(),
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / TENSORS_FILE))
    spec = {
        "user_tokens": list(job.user_tokens),
        "item_tokens": list(job.item_tokens),
        "model_config": asdict(job.model_config),
        "train_config": asdict(job.train_config),
        "device": job.device,
        "backend": backend,
        "mlflow": {"run_id": mlflow_run_id, "tracking_uri": mlflow_tracking_uri, "curves_prefix": curves_prefix},
    }
    if job.user_tokenizer is not None:
        job.user_tokenizer.save(folder / USER_TOKENIZER_DIR)
    (folder / JOB_FILE).write_text(json.dumps(spec, indent=2))
    return folder


def read_job(work_dir: str | os.PathLike[str]) -> tuple[LLM4RecJob, dict[str, Any]]:
    """The job written by :func:`write_job` and its launch/MLflow settings (``backend``, ``mlflow``)."""
    folder = Path(work_dir)
    if not (folder / JOB_FILE).is_file():
        raise FileNotFoundError(f"No {JOB_FILE} in {folder}: the llm4rec node writes it (llm4rec.distributed).")
    spec = json.loads((folder / JOB_FILE).read_text())
    tensors = load_file(str(folder / TENSORS_FILE))
    job = LLM4RecJob(
        train_prompts=pd.read_parquet(folder / TRAIN_FILE),
        valid_prompts=pd.read_parquet(folder / VALID_FILE),
        item_vectors=tensors["item_vectors"],
        user_tokens=spec["user_tokens"],
        item_tokens=spec["item_tokens"],
        user_token_vectors=tensors["user_token_vectors"],
        item_token_vectors=tensors["item_token_vectors"],
        model_config=LLM4RecConfig.from_dict(spec["model_config"]),
        train_config=TrainConfig.from_dict(spec["train_config"]),
        device=spec["device"],
        user_tokenizer=load_tokenizer(folder / USER_TOKENIZER_DIR) if (folder / USER_TOKENIZER_DIR).is_dir() else None,
    )
    return job, {"backend": spec["backend"], "mlflow": spec["mlflow"]}


# --------------------------------------------------------------------------------------------------------------
# Launching workers (the Kedro side)
# --------------------------------------------------------------------------------------------------------------


class DistributedTrainingError(RuntimeError):
    """A worker of the DDP job failed; the message carries the failing rank's error."""


def torchrun_command(work_dir: str | os.PathLike[str], settings: DistributedSettings, node_rank: int = 0) -> list[str]:
    """``python -m torch.distributed.run ... -m tokenrec_pipeline.training.distributed WORK_DIR``.

    One node: ``--standalone`` (a local rendezvous on a free port). Several: c10d rendezvous at
    ``settings.rdzv_endpoint``. ``--max-restarts 0``: a failure is reported, not retried.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(settings.nnodes),
               "--nproc_per_node", str(settings.nproc_per_node), "--max-restarts", "0"]
    if int(settings.nnodes) == 1:
        command.append("--standalone")
    else:
        command += ["--node_rank", str(node_rank), "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", str(settings.rdzv_endpoint)]
    return command + ["-m", ENTRY_MODULE, str(work_dir)]


def _first_worker_error(work_dir: Path) -> dict[str, Any] | None:
    """The earliest error a rank recorded (later ones are usually peers losing their connection to it)."""
    errors = [json.loads(path.read_text()) for path in sorted((work_dir / ERRORS_DIR).glob("rank*.json"))]
    return min(errors, key=lambda error: error["time"]) if errors else None


def launch_workers(work_dir: str | os.PathLike[str], settings: DistributedSettings) -> None:
    """Run ``torchrun`` on a written job folder, streaming its output to the log; wait for it.

    Raises:
        DistributedTrainingError: A worker failed: the first failing rank's exception (type, message and
            traceback), or the tail of torchrun's output when no worker recorded one (e.g. killed by a signal).
    """
    folder = Path(work_dir).resolve()
    command = torchrun_command(folder, settings)
    if int(settings.nnodes) > 1:
        logger.info("Start the other nodes with: %s", " ".join(torchrun_command(folder, settings, node_rank=1))
                    .replace("--node_rank 1", "--node_rank R"), extra=PLAIN)
    logger.info("Launching %s", " ".join(command), extra=PLAIN)
    # Progress bars would arrive as one line per epoch at the end; the epoch log lines say the same.
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=60)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            logger.info("ddp| %s", line.rstrip(), extra=PLAIN)
        returncode = process.wait()
    if returncode == 0:
        return
    error = _first_worker_error(folder)
    if error is not None:
        raise DistributedTrainingError(
            f"Distributed LLM4Rec training failed on rank {error['rank']}: {error['message']}\n"
            f"{error['traceback']}(job folder kept at {folder})"
        )
    output = "\n".join(tail)
    raise DistributedTrainingError(f"torchrun exited with code {returncode} (job folder {folder}):\n{output}")


def train_distributed(
    job: LLM4RecJob,
    settings: DistributedSettings,
    mlflow_run_id: str | None = None,
    mlflow_tracking_uri: str | None = None,
    curves_prefix: str = CURVES_PREFIX,
) -> tuple[LLM4Rec, pd.DataFrame]:
    """Write the job, run it under ``torchrun``, return rank 0's model and the epoch history (rank 0 logs the
    epoch records live under ``curves_prefix``).

    The model is loaded with :func:`~tokenrec_pipeline.models.llm4rec.load_llm4rec`, the catalog's load path
    for ``llm4rec_model``. A temporary job folder is removed after success and kept after a failure.
    """
    # The workers check too; failing here saves starting them.
    check_global_batch(job.train_config.batch_size, int(settings.nproc_per_node) * int(settings.nnodes))
    folder = Path(settings.work_dir) if settings.work_dir else Path(tempfile.mkdtemp(prefix="llm4rec-ddp-"))
    write_job(folder, job, settings.backend, mlflow_run_id, mlflow_tracking_uri, curves_prefix)
    launch_workers(folder, settings)
    if not (folder / MODEL_DIR).is_dir():
        raise DistributedTrainingError(f"The DDP job finished without writing {folder / MODEL_DIR}.")
    model = load_llm4rec(folder / MODEL_DIR, device=job.device)
    history = pd.read_csv(folder / HISTORY_FILE)
    if not settings.work_dir:
        shutil.rmtree(folder, ignore_errors=True)
    return model, history


# --------------------------------------------------------------------------------------------------------------
# The worker (the torchrun side)
# --------------------------------------------------------------------------------------------------------------


def worker_device(requested: str | None, local_rank: int) -> torch.device:
    """The device of this worker: ``requested`` (``None``: CUDA when present), CUDA as ``cuda:LOCAL_RANK``."""
    device = resolve_device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" -> nccl for CUDA workers, gloo for CPU ones; nccl on a CPU worker is refused."""
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("llm4rec.distributed.backend 'nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPU.")
    return backend


def mlflow_epoch_logger(run_id: str, tracking_uri: str | None,
                        prefix: str = CURVES_PREFIX) -> Callable[[dict[str, float]], None]:
    """Log each epoch record into the existing run ``run_id`` (names as in-process: ``train.llm4rec.*``).

    Through ``MlflowClient`` rather than ``start_run``: ending a started run would mark the parent
    ``kedro run``'s run finished while it is still running.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)

    def log(record: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        curves = history_to_mlflow(pd.DataFrame([record]), prefix)
        metrics = [Metric(key, point["value"], timestamp, point["step"]) for key, points in curves.items()
                   for point in points]
        client.log_batch(run_id, metrics=metrics)

    return log


def _write_error(work_dir: Path, rank: int, error: BaseException) -> None:
    (work_dir / ERRORS_DIR).mkdir(parents=True, exist_ok=True)
    report = {"rank": rank, "time": time.time(), "message": f"{type(error).__name__}: {error}",
              "traceback": "".join(traceback.format_exception(error))}
    (work_dir / ERRORS_DIR / f"rank{rank}.json").write_text(json.dumps(report))


def run_worker(work_dir: str | os.PathLike[str]) -> None:
    """One rank of the job: join the process group, train, and on rank 0 write history and checkpoint."""
    folder = Path(work_dir)
    job, launch = read_job(folder)
    job.train_config.show_progress = False
    device = worker_device(job.device, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=resolve_backend(launch["backend"], device))
    try:
        group = ProcessGroup.current(device)
        job.device = str(device)
        run_id = launch["mlflow"]["run_id"]
        prefix = launch["mlflow"].get("curves_prefix", CURVES_PREFIX)
        on_epoch_end = (mlflow_epoch_logger(run_id, launch["mlflow"]["tracking_uri"], prefix)
                        if group.is_main and run_id else None)
        if group.is_main:
            logger.info("DDP job: %d processes, backend %s, device %s.", group.world_size, dist.get_backend(), device)
        model, result = fit_llm4rec(job, distributed=True, on_epoch_end=on_epoch_end)
        if group.is_main:
            pd.DataFrame(result.history).to_csv(folder / HISTORY_FILE, index=False)
            model.save_pretrained(folder / MODEL_DIR)  # staged folder, renamed into place when complete
    finally:
        dist.destroy_process_group()


@record
def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``torchrun [...] -m tokenrec_pipeline.training.distributed WORK_DIR``."""
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", help="job folder written by the llm4rec node (write_job)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    try:
        run_worker(args.work_dir)
    except BaseException as error:
        _write_error(Path(args.work_dir), rank, error)
        raise


if __name__ == "__main__":
    main()
