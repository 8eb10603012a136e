"""Language-model speed on this machine: training steps per second and retrieval latency by precision.

    kedro run --pipeline=full                                   # once: the artefacts this reads
    python -m benchmarks.lm_speed [--steps 12] [--threads 1] [--users 128]

Reads the artefacts of the last ``kedro run`` through the project's catalog (``conf/base`` + ``conf/local``):
train prompts, CF embeddings, tokenizers, the trained ``llm4rec_model``, its ``item_index`` and the test
prompts. Everything is measured in this one process, so the ratios hold on a busy machine:

* Tokenisation: milliseconds per batch of tokenising the prompt strings (what every step paid before) against
  padding pre-tokenised ids (what a step pays now), beside the step time.
* Training: optimiser steps per second of the default recipe from the same fresh model for fp32 and bf16
  autocast, with and without length bucketing (``llm4rec.training.precision`` / ``length_bucketing``).
* Inference: milliseconds per user of prompt -> LLM4Rec -> index top-20 at batch 64 and 1 for fp32, bf16 and
  int8, with HR@20 on those users and the overlap of each top-20 with fp32's
  (:func:`~tokenrec_pipeline.models.tokenrec.compare_precisions`).

Ends with one summary line.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, TrainConfig, build_llm4rec, train_llm4rec
from tokenrec_pipeline.models.precision import describe_machine
from tokenrec_pipeline.models.tokenrec import compare_precisions, id_token_vocabularies
from tokenrec_pipeline.pipelines.llm4rec.nodes import resolve_recipe, select_training_prompts

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAINING_VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def load_run_artefacts(project_path: Path) -> dict:
    """The datasets and parameters of the last ``kedro run`` this benchmark reads, through the catalog."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path) as session:
        catalog = session.load_context().catalog
        names = ["train_prompts", "fold_in_train_prompts", "test_prompts", "cf_embeddings", "user.tokenizer",
                 "item.tokenizer", "llm4rec_model", "item_index"]
        missing = [name for name in names if not catalog.exists(name)]
        if missing:
            raise SystemExit(f"error: no {', '.join(missing)} yet; run `kedro run --pipeline=full` first.")
        artefacts = {name: catalog.load(name) for name in names}
        for name in ("llm4rec", "llm4rec_paper", "tokenizer", "seed"):
            artefacts[name] = catalog.load(f"params:{name}")
    return artefacts


def time_tokenisation(model, prompts: list[str], batch_size: int, batches: int) -> tuple[float, float]:
    """Milliseconds per batch: tokenising strings vs padding pre-tokenised ids (same batches)."""
    ids = model.backbone.token_ids(prompts)
    starts = range(0, min(len(prompts), batch_size * batches), batch_size)
    began = time.perf_counter()
    for start in starts:
        model.backbone.tokenize(prompts[start : start + batch_size])
    tokenise = (time.perf_counter() - began) / len(starts) * 1000
    began = time.perf_counter()
    for start in starts:
        model.backbone.collate(ids[start : start + batch_size])
    collate = (time.perf_counter() - began) / len(starts) * 1000
    return tokenise, collate


def token_prefix(artefacts: dict, side: str) -> str:
    """The side's token prefix as the llm4rec stage reads it, from the fitted tokenizer; a tokenizer saved before
    it kept its prefix has none, and its run's prompts were written with ``tokenizer.<side>.token_prefix``."""
    try:
        return artefacts[f"{side}.tokenizer"].token_prefix
    except ValueError:
        return artefacts["tokenizer"][side]["token_prefix"]


def training_speed(artefacts: dict, steps: int) -> tuple[pd.DataFrame, object]:
    """Steps per second of the default recipe from one fresh model, per (precision, length bucketing)."""
    llm4rec = resolve_recipe(artefacts["llm4rec"], artefacts["llm4rec_paper"], "default")
    prompts, training = select_training_prompts(artefacts["train_prompts"], artefacts["fold_in_train_prompts"],
                                                llm4rec["training"])
    item_vectors = artefacts["cf_embeddings"]["item_embeddings"]
    vocab = id_token_vocabularies(artefacts["user.tokenizer"], artefacts["item.tokenizer"],
                                  token_prefix(artefacts, "user"), token_prefix(artefacts, "item"))
    config = LLM4RecConfig.from_dict({**llm4rec["model"], "cf_dim": int(item_vectors.shape[1]),
                                      "seed": artefacts["seed"]})
    fresh = build_llm4rec(config, vocab["user_tokens"], vocab["item_tokens"], vocab["user_token_vectors"],
                          vocab["item_token_vectors"], device="cpu", user_tokenizer=artefacts["user.tokenizer"],
                          item_vectors=item_vectors)
    batch_size = int(training.get("batch_size", 32))
    rows = []
    for precision, bucketing in TRAINING_VARIANTS:
        model = copy.deepcopy(fresh)
        settings = {key: value for key, value in training.items() if key not in ("num_threads",)}
        settings.update(epochs=1, samples_per_epoch=steps * batch_size, precision=precision,
                        length_bucketing=bucketing, show_progress=False, validate_before_training=False,
                        seed=artefacts["seed"])
        began = time.perf_counter()
        result = train_llm4rec(model, list(prompts["prompt"]), prompts["target_item"].to_numpy(), item_vectors,
                               TrainConfig.from_dict(settings),
                               histories=[np.asarray(h) for h in prompts["history"]])
        seconds = time.perf_counter() - began
        rows.append({"precision": precision, "length_bucketing": bucketing, "steps": steps,
                     "seconds": seconds, "steps_per_second": steps / seconds, "loss": result.history[-1]["loss"]})
        logger.info("training %s, bucketing %s: %.3f steps/s", precision, bucketing, steps / seconds)
    table = pd.DataFrame(rows)
    table["speedup_vs_fp32"] = table["steps_per_second"] / table.loc[0, "steps_per_second"]
    return table, fresh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=PROJECT_ROOT, help="Kedro project whose artefacts to read")
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps timed per training variant")
    parser.add_argument("--users", type=int, default=128, help="seen test users timed at batch 64")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-training", action="store_true", help="only the inference table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_machine())
    print(f"torch threads: {torch.get_num_threads()}")
    artefacts = load_run_artefacts(args.project)
    model = artefacts["llm4rec_model"]
    test = artefacts["test_prompts"]
    seen = test[(test["variant"] == "full") & (test["user_group"] == "seen")].head(args.users)
    prompts, histories = list(seen["prompt"]), [list(h) for h in seen["history"]]

    summary = []
    if not args.skip_training:
        train_prompts = list(artefacts["fold_in_train_prompts"]["prompt"])
        tokenise_ms, collate_ms = time_tokenisation(model, train_prompts, 32, 30)
        training, _ = training_speed(artefacts, args.steps)
        print("\nTraining (default recipe, batch 32, same fresh model per row):")
        print(training.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        step_ms = 1000 / training.loc[0, "steps_per_second"]
        print(f"\nTokenisation per batch of 32: strings {tokenise_ms:.2f} ms, pre-tokenised ids {collate_ms:.2f} ms "
              f"(an fp32 step: {step_ms:.0f} ms, so tokenising every epoch cost {100 * tokenise_ms / step_ms:.2f}% "
              f"of a step)")
        best = training.iloc[training["steps_per_second"].idxmax()]
        summary.append(f"training {best['precision']}{' + bucketing' if best['length_bucketing'] else ''} "
                       f"{best['speedup_vs_fp32']:.2f}x fp32 steps/s")
    inference = compare_precisions(model, artefacts["item_index"], prompts, histories,
                                   seen["target_item"].to_numpy(), ["bf16", "int8"])
    print(f"\nInference: prompt -> LLM4Rec -> top-20, {len(prompts)} seen test users "
          f"(model's own precision: {model.config.inference_precision} -> {model.inference_precision()}):")
    print(inference.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for row in inference.itertuples():
        if row.precision != "fp32" and not pd.isna(getattr(row, "ms_per_user", np.nan)):
            summary.append(f"{row.precision} inference {row.speedup_vs_fp32:.2f}x fp32 "
                           f"(top-20 overlap {row.overlap_with_fp32:.3f})")
    print("\nSummary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
