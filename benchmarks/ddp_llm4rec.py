"""LLM4Rec trained in one process vs as a DDP job under torchrun: same parameters, and what it costs.

    python -m benchmarks.ddp_llm4rec [--nproc 2] [--prompts 96] [--batch-size 16]
        [--epochs 2] [--max-length 48] [--backend auto]

Backbone: the packaged all-MiniLM-L6-v2 with its dropout set to 0 (and none in the head), so both runs
compute the same function and any difference is floating-point summation order. Synthetic prompts in the
project's format (user tokens, item tokens of a 3x8 vocabulary, 40 items with random 32-d CF vectors). The
single-process run uses ``batch_size`` prompts per step; the DDP run the same global batch,
``batch_size / nproc`` per process. Prints the largest parameter difference, the per-epoch loss and
validation NDCG@20 of both, and the wall time of each (the DDP time includes starting torchrun and the
workers, loading the backbone in each, and writing/reading the checkpoint).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModel, AutoTokenizer

from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, TrainConfig, minilm_model_dir
from tokenrec_pipeline.training.distributed import DistributedSettings, LLM4RecJob, fit_llm4rec, train_distributed

N_ITEMS, CF_DIM, CODES, K = 40, 32, 8, 3


def minilm_without_dropout(folder: Path) -> str:
    """A copy of the packaged MiniLM whose dropout probabilities are 0."""
    source = minilm_model_dir()
    model = AutoModel.from_pretrained(source, local_files_only=True, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(folder)
    return str(folder)


def synthetic_prompts(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Prompts naming a user (K tokens) and three history items (K tokens each); target = next item id."""
    def tokens(prefix: str, index: int) -> str:
        return "".join(f"<{prefix}{k}-{(index * (k + 3) + k) % CODES}>" for k in range(1, K + 1))

    rows = []
    for row in range(n):
        history = rng.choice(N_ITEMS, size=3, replace=False)
        items = ", ".join(f"item_{tokens('i', int(i))}" for i in history)
        rows.append({"prompt": f"According to what items the user_{tokens('u', row)} has interacted with: {items}.",
                     "user_id": row, "target_item": int((history[-1] + 1) % N_ITEMS), "history": history})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    user_tokens = [f"<u{k}-{i}>" for k in range(1, K + 1) for i in range(CODES)]
    item_tokens = [f"<i{k}-{i}>" for k in range(1, K + 1) for i in range(CODES)]
    with tempfile.TemporaryDirectory() as tmp:
        backbone = minilm_without_dropout(Path(tmp) / "minilm")
        job = LLM4RecJob(
            train_prompts=synthetic_prompts(args.prompts, rng), valid_prompts=synthetic_prompts(32, rng),
            item_vectors=torch.randn(N_ITEMS, CF_DIM, generator=torch.Generator().manual_seed(1)),
            user_tokens=user_tokens, item_tokens=item_tokens,
            user_token_vectors=torch.randn(len(user_tokens), 8, generator=torch.Generator().manual_seed(2)),
            item_token_vectors=torch.randn(len(item_tokens), 8, generator=torch.Generator().manual_seed(3)),
            # The paper's plain cosine head in fp32, random batches (the defaults this benchmark was written with)
            model_config=LLM4RecConfig(backbone=backbone, cf_dim=CF_DIM, proj_dropout=0.0, max_length=args.max_length,
                                       truncation_side="right", item_space="cosine", head="plain",
                                       id_token_table=False, inference_precision="fp32"),
            train_config=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=1e-4,
                                     head_learning_rate=1e-3, token_learning_rate=None, patience=None,
                                     validate_before_training=False, length_bucketing=False, restore_best=False,
                                     show_progress=False, num_threads=1),
            device="cpu",
        )
        started = time.perf_counter()
        single, result = fit_llm4rec(job)
        single_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ddp, ddp_history = train_distributed(job, DistributedSettings(enabled=True, nproc_per_node=args.nproc,
                                                                      backend=args.backend))
        ddp_seconds = time.perf_counter() - started

    single_state, ddp_state = single.state_dict(), ddp.state_dict()
    worst = max((single_state[k] - ddp_state[k]).abs().max().item() for k in single_state)
    largest = max(v.abs().max().item() for v in single_state.values())
    history = pd.DataFrame(result.history)
    steps = args.epochs * -(-args.prompts // args.batch_size)
    print(f"\nMiniLM (dropout 0), {args.prompts} synthetic prompts, global batch {args.batch_size}, "
          f"{args.epochs} epochs = {steps} AdamW steps, max_length {args.max_length}")
    print(f"max |param(1 process) - param({args.nproc}-process DDP)| = {worst:.3g} "
          f"(largest |param| {largest:.3g}) over {len(single_state)} tensors")
    table = pd.DataFrame({"epoch": history["epoch"].astype(int), "loss 1 proc": history["loss"],
                          f"loss {args.nproc} DDP": ddp_history["loss"], "ndcg@20 1 proc": history["valid_NDCG@20"],
                          f"ndcg@20 {args.nproc} DDP": ddp_history["valid_NDCG@20"]})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.6f}"))
    print(f"wall: 1 process {single_seconds:.1f}s, {args.nproc}-process DDP {ddp_seconds:.1f}s "
          f"(incl. torchrun start-up, {args.nproc} backbone loads, checkpoint write + read)")


if __name__ == "__main__":
    main()
