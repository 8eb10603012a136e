"""TokenRec ablation: the paper's recipe, each deviation switched on alone, and all together (the default).

    python -m benchmarks.tokenrec_ablation --datasets synthetic lastfm ml-100k \\
        [--variants paper mips residual_user ... default] [--set llm4rec.training.epochs=2] [--out ablation.csv]

For each dataset the project's own pipelines (ingestion -> preprocessing -> cf_pretraining -> baselines ->
tokenization -> prompting) run in this process on an in-memory catalog with the parameters of ``conf/base``
(nothing under ``data/`` is written; ``lastfm`` is the authors' LastFM sequences and ``ml-100k`` /
``beauty`` the files in ``--shared-data``). Then LLM4Rec is trained once per variant with the same seed,
prompts and budget, and each is evaluated under the protocol: validation NDCG@20 of the kept checkpoint,
test HR@20 / NDCG@20 for seen and unseen users, the "User ID Only" prompt beside the full one, wall time
and optimiser steps. The baselines stage's table of the same run (Pop, MF, LightGCN and SASRec: ``--baselines``)
is printed beside them.

Variants (``llm4rec`` parameters over the paper's recipe ``llm4rec_paper``):

* ``paper``: the paper's recipe.
* ``mips``: score by inner product through the augmented cosine index (``model.item_space=mips``).
* ``step0``: validate before the first step; the untrained model can be the kept checkpoint.
* ``token_lr``: ID-token embeddings as their own table with their own learning rate.
* ``fold_in``: train prompts' user tokens folded in from the prefix (``training.train_user_tokens``).
* ``residual_user``: ``z = Dec_user(user codes) + Proj(h)`` (with ``mips``: that head is defined in the
  space whose ranking it reproduces; alone in the cosine space it is measured too as ``residual_cosine``).
* ``softmax``: cross-entropy over all items instead of the pairwise cosine loss.
* ``default``: ``conf/base/parameters_llm4rec.yml`` as shipped (all changes that helped);
  ``default_softmax``: the same with the softmax loss.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from tokenrec_pipeline.evaluation.ranking import metrics_wide
from tokenrec_pipeline.io.datasets import RawDataDirectory
from tokenrec_pipeline.models.tokenrec import evaluate_prompt_variants
from tokenrec_pipeline.pipelines import baselines, cf_pretraining, ingestion, preprocessing, prompting, tokenization
from tokenrec_pipeline.pipelines.llm4rec.nodes import resolve_recipe, train_recipe

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Changes laid over the paper's recipe, one at a time ("default" is the shipped configuration).
VARIANTS: dict[str, dict] = {
    "paper": {},
    "mips": {"model": {"item_space": "mips"}},
    "step0": {"training": {"validate_before_training": True}},
    "token_lr": {"model": {"id_token_table": True}, "training": {"token_learning_rate": 1e-3}},
    "fold_in": {"training": {"train_user_tokens": "prefix_fold_in"}},
    "residual_cosine": {"model": {"head": "residual_user"}},
    "residual_user": {"model": {"head": "residual_user", "item_space": "mips"}},
    "softmax": {"training": {"loss": "softmax"}},
    "default": None,
    "default_softmax": {"training": {"loss": "softmax"}},  # the shipped configuration with the softmax loss
}

# How each dataset is read (runtime parameters over conf/base) and where its files are in --shared-data.
DATASETS: dict[str, dict] = {
    "synthetic": {"dataset": "synthetic"},
    "lastfm": {"dataset": "sequences",
               "ingestion.sequences.path": "{shared}/tokenrec_processed/LastFM/user_sequence.txt"},
    "beauty": {"dataset": "sequences", "ingestion.sequences.path": "{shared}/amazon-beauty/sequential_data.txt"},
    "ml-100k": {"dataset": "ml-100k"},
}


def set_dotted(params: dict, dotted: str, value: object) -> None:
    """``params["a"]["b"] = value`` for ``dotted == "a.b"`` (missing levels created)."""
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def load_parameters(overrides: dict[str, object]) -> dict:
    """``conf/base`` parameters (``conf/local`` ignored, so a user's local settings do not leak in) with
    dotted overrides applied."""
    loader = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="base")
    params = copy.deepcopy(dict(loader["parameters"]))
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    return params


def _parameter_entries(params: dict, prefix: str = "params:") -> dict[str, object]:
    """Every ``params:a`` and ``params:a.b...`` name a pipeline may ask for."""
    entries = {}
    for key, value in params.items():
        entries[f"{prefix}{key}"] = value
        if isinstance(value, dict):
            entries.update(_parameter_entries(value, f"{prefix}{key}."))
    return entries


class _KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release: the benchmark reads every output after the run."""

    def _release(self) -> None:
        pass


def run_upstream(params: dict, shared_data: Path) -> dict[str, object]:
    """The data, CF (the teacher), baselines, tokenizer and prompt stages on an in-memory catalog; returns every
    dataset they produce (``baseline_metrics``, the baselines stage's table, among them)."""
    pipeline = (ingestion.create_pipeline() + preprocessing.create_pipeline() + cf_pretraining.create_pipeline()
                + baselines.create_pipeline() + tokenization.create_pipeline() + prompting.create_pipeline())
    catalog = DataCatalog()
    catalog["raw_data"] = RawDataDirectory(str(shared_data), download=False)
    for name, value in _parameter_entries(params).items():
        catalog[name] = MemoryDataset(value, copy_mode="assign")
    for name in pipeline.all_outputs():
        catalog[name] = _KeptDataset(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog[name].load() for name in pipeline.all_outputs()}


def variant_parameters(params: dict, variant: str) -> dict:
    """The resolved ``llm4rec`` block of one variant."""
    if variant not in VARIANTS:
        raise SystemExit(f"error: unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")
    if VARIANTS[variant] is None:
        return resolve_recipe(params["llm4rec"], params["llm4rec_paper"], "default")
    base = "default" if variant.startswith("default") else "paper"
    resolved = resolve_recipe(params["llm4rec"], params["llm4rec_paper"], base)
    for block, values in VARIANTS[variant].items():
        resolved[block] = {**resolved[block], **values}
    return resolved


def run_variant(data: dict, params: dict, variant: str) -> dict:
    """Train and evaluate one variant; one result row."""
    llm4rec = variant_parameters(params, variant)
    started = time.perf_counter()
    model, history, _ = train_recipe(
        data["train_prompts"], data["fold_in_train_prompts"], data["valid_prompts"], data["cf_embeddings"],
        data["user.tokenizer"], data["item.tokenizer"], llm4rec, params["seed"],
        "ablation", f"LLM4Rec ({variant})")
    train_seconds = time.perf_counter() - started
    test = data["test_prompts"][data["test_prompts"]["variant"].isin(["full", "user_only"])]
    long, _ = evaluate_prompt_variants(model, test, model.items_in_space(data["cf_embeddings"]["item_embeddings"]))
    wide = metrics_wide(long).set_index(["model", "user_group"])
    best = history.loc[history["valid_NDCG@20"].idxmax()]
    batch = int(llm4rec["training"]["batch_size"])
    row = {"variant": variant, "valid_NDCG@20": float(best["valid_NDCG@20"]), "best_epoch": int(best["epoch"]),
           "train_s": round(train_seconds, 1),
           "optimiser_steps": int(sum(-(-int(s) // batch) for s in history["samples"].fillna(0)))}
    for group in ("seen", "unseen"):
        for metric in ("HR@20", "NDCG@20"):
            row[f"{group}_{metric}"] = float(wide.loc[("tokenrec", group), metric])
    row["seen_user_only_HR@20"] = float(wide.loc[("tokenrec (user_only)", "seen"), "HR@20"])
    row["id_token_cos_initial_final"] = id_token_drift(model, data, params, llm4rec)
    return row


def _id_token_rows(model) -> torch.Tensor:
    """(T, H) input embeddings of the ID tokens as the forward pass reads them."""
    if model.id_embeddings is not None:
        return model.id_embeddings.weight.detach().float().cpu()
    weight = model.backbone.base_model.get_input_embeddings().weight
    return weight.detach()[torch.as_tensor(model.new_token_ids, device=weight.device)].float().cpu()


def id_token_drift(model, data: dict, params: dict, llm4rec: dict) -> float:
    """Mean cos(initial, trained) of the ID-token embeddings (1.0: they did not move). The initial rows come
    from building the same model again (same seed and config)."""
    from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, build_llm4rec
    from tokenrec_pipeline.models.tokenrec import id_token_vocabularies

    user_tokenizer, item_tokenizer = data["user.tokenizer"], data["item.tokenizer"]
    vocab = id_token_vocabularies(user_tokenizer, item_tokenizer, user_tokenizer.token_prefix,
                                  item_tokenizer.token_prefix)
    item_vectors = data["cf_embeddings"]["item_embeddings"]
    config = LLM4RecConfig.from_dict({**llm4rec["model"], "cf_dim": int(item_vectors.shape[1]), "seed": params["seed"]})
    initial = build_llm4rec(config, vocab["user_tokens"], vocab["item_tokens"], vocab["user_token_vectors"],
                            vocab["item_token_vectors"], device="cpu", user_tokenizer=data["user.tokenizer"],
                            item_vectors=item_vectors)
    return float(torch.nn.functional.cosine_similarity(_id_token_rows(initial), _id_token_rows(model), dim=1).mean())


def baseline_rows(data: dict) -> list[dict]:
    """The baselines of the same run (``baseline_metrics``: those in ``--baselines``), in the same columns."""
    wide = metrics_wide(data["baseline_metrics"])
    rows = []
    for model in wide["model"].unique():
        row = {"variant": model}
        valid = wide[(wide["model"] == model) & (wide["split"] == "valid") & (wide["user_group"] == "seen")]
        row["valid_NDCG@20"] = float(valid["NDCG@20"].iloc[0]) if len(valid) else float("nan")
        for group in ("seen", "unseen"):
            part = wide[(wide["model"] == model) & (wide["split"] == "test") & (wide["user_group"] == group)]
            for metric in ("HR@20", "NDCG@20"):
                row[f"{group}_{metric}"] = float(part[metric].iloc[0]) if len(part) else float("nan")
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic"], choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--shared-data", type=Path, default=PROJECT_ROOT.parent / "shared" / "data")
    parser.add_argument("--baselines", default="pop mf lightgcn sasrec",
                        help="baselines.enabled for the upstream run (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="parameter override (YAML value), e.g. llm4rec.training.epochs=2; repeatable")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.datasets:
        overrides: dict[str, object] = {key: value.format(shared=args.shared_data) if isinstance(value, str) else value
                                        for key, value in DATASETS[dataset].items()}
        overrides["baselines.enabled"] = args.baselines
        for item in args.set:
            if "=" not in item:
                sys.exit(f"error: --set {item!r} must look like KEY=VALUE.")
            key, raw = item.split("=", 1)
            overrides[key] = yaml.safe_load(raw)
        params = load_parameters(overrides)
        started = time.perf_counter()
        data = run_upstream(params, args.shared_data)
        print(f"{dataset}: data, CF models, tokenizers and prompts in {time.perf_counter() - started:.0f}s", flush=True)
        for side in data["tokenizer_diagnostics"].to_dict("records"):
            print(f"{dataset}: {side['side']} tokens ({side['quantizer']}): collision rate "
                  f"{side.get('collision_rate', float('nan')):.4f}", flush=True)
        rows += [{"dataset": dataset, **row} for row in baseline_rows(data)]
        for variant in args.variants:
            row = {"dataset": dataset, **run_variant(data, params, variant)}
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"tokenrec_ablation: {len(table)} rows over {len(args.datasets)} dataset(s)")


if __name__ == "__main__":
    main()
