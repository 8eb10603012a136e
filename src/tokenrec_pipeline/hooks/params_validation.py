"""Every stage's parameters checked before the first node runs: known keys, types and ranges.

The schema is the base configuration itself (``conf/base/parameters*.yml``): a key is known when base
has it, at every level, and a value must have the type of base's value (``null`` in base accepts any
type; ``null`` as a value is accepted unless a range rule below says the knob needs a number). So a new
parameter is known as soon as it is in ``conf/base`` -- there is no second list of keys to keep in step.
Ranges are written here for the numeric and enumerated knobs that break a run when wrong
(:data:`LEAF_RULES` by key name anywhere, :data:`PATH_RULES` by full path, which wins).

Some blocks hold the keys of another block: ``llm4rec_paper`` overrides ``llm4rec``, a side's
``tokenizer.<side>.overrides`` overrides ``tokenizer``, each ``quantizer_sweep.<quantizer>`` overrides the
whole parameter tree (:data:`SCHEMA_ALIASES`). Empty mappings in base take any keys.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tokenrec_pipeline.data.preprocess import SPLIT_STRATEGIES


class ParameterError(ValueError):
    """One or more parameters are unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Number:
    """A number in a range; ``integer`` refuses fractions, ``nullable`` accepts null."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    integer: bool = False
    nullable: bool = False
    why: str = ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None."""
        if value is None:
            return None if self.nullable else f"must be {self.describe()}, not null"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be {self.describe()}"
        if self.integer and not float(value).is_integer():
            return f"must be {self.describe()}"
        out_of_range = ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                        or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))
        return f"must be {self.describe()}" if out_of_range else None

    def describe(self) -> str:
        """``an integer >= 1``, ``a number in [0, 0.5]`` ..."""
        kind = "an integer" if self.integer else "a number"
        low = f"[{_fmt(self.ge)}" if self.ge is not None else f"({_fmt(self.gt)}" if self.gt is not None else None
        high = f"{_fmt(self.le)}]" if self.le is not None else f"{_fmt(self.lt)})" if self.lt is not None else None
        if low and high:
            text = f"{kind} in {low}, {high}"
        elif low:
            text = f"{kind} {'>=' if self.ge is not None else '>'} {low[1:]}"
        elif high:
            text = f"{kind} {'<=' if self.le is not None else '<'} {high[:-1]}"
        else:
            text = kind
        text += " or null" if self.nullable else ""
        return text + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings (``nullable``: or null)."""

    options: tuple[str, ...]
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None and self.nullable:
            return None
        return None if value in self.options else f"must be one of {list(self.options)}"


@dataclass(frozen=True)
class Quantiles:
    """Two quantiles ``0 < q1 < q2 < 1`` (``preprocessing.temporal_cutoffs``)."""

    def problem(self, value: Any) -> str | None:
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(isinstance(q, (int, float)) and not isinstance(q, bool) for q in value)
              and 0 < value[0] < value[1] < 1)
        return None if ok else "must be two quantiles 0 < q1 < q2 < 1, e.g. [0.8, 0.9]"


Rule = Number | Choice | Quantiles


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


POSITIVE_INT = Number(ge=1, integer=True)
RATE = Number(gt=0)
DROPOUT = Number(ge=0, lt=1)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # models.precision.TRAINING_PRECISIONS (a test keeps them equal)
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")  # models.precision.INFERENCE_PRECISIONS

LEAF_RULES: dict[str, Rule] = {
    "seed": Number(ge=0, integer=True),
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "patience": Number(ge=0, integer=True),
    "eval_every": POSITIVE_INT,
    "lr": RATE, "learning_rate": RATE, "head_learning_rate": RATE,
    "token_learning_rate": Number(gt=0, nullable=True),
    "weight_decay": Number(ge=0), "lambda_reg": Number(ge=0),
    "dropout": DROPOUT, "proj_dropout": DROPOUT, "lora_dropout": DROPOUT, "head_dropout": DROPOUT,
    "embedding_dim": POSITIVE_INT, "hidden_size": POSITIVE_INT, "inner_size": POSITIVE_INT,
    "num_layers": POSITIVE_INT, "num_heads": POSITIVE_INT, "head_layers": POSITIVE_INT,
    "max_length": Number(ge=2, integer=True),
    "num_threads": Number(ge=1, integer=True, nullable=True),
    "samples_per_epoch": Number(ge=1, integer=True, nullable=True),
    "max_train_seconds": Number(gt=0, nullable=True),
    "num_negatives": Number(ge=0, integer=True),
    "inference_precision": Choice(INFERENCE_PRECISIONS),
    "precision": Choice(PRECISIONS),
}
"""Rules by key name, wherever the key is (``*.batch_size`` of every stage)."""

PATH_RULES: dict[str, Rule] = {
    "torch_num_threads": Number(ge=1, integer=True, nullable=True),
    "ingestion.synthetic.n_users": Number(ge=2, integer=True),
    "ingestion.synthetic.n_items": Number(ge=2, integer=True),
    "ingestion.synthetic.n_groups": POSITIVE_INT,
    "ingestion.synthetic.mean_history": Number(gt=0),
    "ingestion.synthetic.min_history": POSITIVE_INT,
    "ingestion.synthetic.noise": Number(ge=0, le=1),
    "ingestion.synthetic.time_span_days": Number(gt=0),
    "preprocessing.rating_threshold": Number(nullable=True),
    "preprocessing.k_core": Number(ge=0, integer=True),
    "preprocessing.unseen_user_fraction": Number(
        ge=0, le=0.5, why="the share of users held out of all training; the rest train every model"),
    "preprocessing.split_strategy": Choice(SPLIT_STRATEGIES),
    "preprocessing.temporal_cutoffs": Quantiles(),
    "cf_pretraining.model": Choice(("lightgcn", "mf")),
    "cf_pretraining.fold_in": Choice(("symmetric", "mean")),
    "cf_pretraining.*.num_layers": Number(ge=0, integer=True),
    "tokenizer.quantizer": Choice(("mq", "rqvae", "vqvae", "kmeans")),
    "tokenizer.n_codebooks": POSITIVE_INT,
    "tokenizer.codebook_size": Number(ge=2, integer=True),
    "tokenizer.code_dim": POSITIVE_INT,
    "tokenizer.mask_ratio": Number(ge=0, lt=1),
    "tokenizer.beta": Number(ge=0),
    "tokenizer.valid_fraction": Number(ge=0, lt=1),
    "tokenizer.kmeans_iters": POSITIVE_INT,
    "tokenizer.reseed_noise": Number(ge=0),
    "prompting.history_length": POSITIVE_INT,
    "prompting.min_prefix": POSITIVE_INT,
    "prompting.max_prefixes_per_user": Number(ge=1, integer=True, nullable=True),
    "prompting.history_order": Choice(("chronological", "shuffled")),
    "prompting.test_template_id": Number(ge=0, integer=True),
    "llm4rec.recipe": Choice(("default", "paper")),
    "llm4rec.model.kind": Choice(("auto", "encoder", "encoder_decoder", "decoder")),
    "llm4rec.model.max_length": Number(ge=8, integer=True),
    "llm4rec.model.truncation_side": Choice(("left", "right")),
    "llm4rec.model.proj_hidden_dim": POSITIVE_INT,
    "llm4rec.model.item_space": Choice(("cosine", "mips")),
    "llm4rec.model.head": Choice(("plain", "residual_user")),
    "llm4rec.model.lora_r": POSITIVE_INT,
    "llm4rec.model.lora_alpha": Number(gt=0),
    "llm4rec.training.warmup_ratio": Number(ge=0, le=1),
    "llm4rec.training.max_grad_norm": Number(gt=0, nullable=True),
    "llm4rec.training.loss": Choice(("cosine", "softmax")),
    "llm4rec.training.temperature": Number(gt=0),
    "llm4rec.training.gamma": Number(ge=-1, le=1),
    "llm4rec.training.samples_per_user": Number(gt=0, nullable=True),
    "llm4rec.training.train_user_tokens": Choice(("full_graph", "prefix_fold_in")),
    "llm4rec.validation.max_users": Number(ge=1, integer=True, nullable=True),
    "llm4rec.distributed.nproc_per_node": POSITIVE_INT,
    "llm4rec.distributed.nnodes": POSITIVE_INT,
    "autoregressive.beam_size": POSITIVE_INT,
    "autoregressive.validation.max_users": Number(ge=1, integer=True, nullable=True),
    "baselines.*.loss": Choice(("ce", "sampled_softmax")),
    "baselines.*.mask_prob": Number(gt=0, lt=1),
    "evaluation.latency_users": Number(ge=0, integer=True),
    "evaluation.latency_single_users": Number(ge=0, integer=True),
    "evaluation.latency_top_k": POSITIVE_INT,
    "evaluation.significance.n_resamples": POSITIVE_INT,
    "evaluation.significance.confidence": Number(gt=0, lt=1),
    "indexing.search_params.nprobe": POSITIVE_INT,
    "indexing.search_params.efSearch": POSITIVE_INT,
    "recommend.top_k": POSITIVE_INT,
    "recommend.on_unknown_item": Choice(("error", "skip")),
}
"""Rules by full dotted path (``*`` matches one key); they win over :data:`LEAF_RULES`."""

SCHEMA_ALIASES: dict[str, str] = {
    "llm4rec_paper": "llm4rec",
    "tokenizer.*.overrides": "tokenizer",
    "quantizer_sweep.*": "",
}
"""Blocks whose keys are those of another block ("" = the whole parameter tree)."""

LIST_SUBSETS = ("baselines.enabled",)
"""Lists whose entries must be among base's entries (a space-separated string is accepted too)."""

MOVED_KEYS: dict[str, str] = {
    "cf_pretraining.mf": "baselines.mf",  # MF is a baseline of the baselines stage; cf_pretraining trains the teacher
}
"""Keys that base no longer has because they moved: an override of the old path is refused naming the new one."""


# --------------------------------------------------------------------------- the schema (conf/base)
def _deep_merge(into: dict, other: Mapping) -> dict:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def load_base_parameters(conf_base: Path) -> dict:
    """The parameter tree of ``conf_base`` (every ``parameters*.yml``, deep-merged as Kedro does)."""
    files = sorted({*conf_base.glob("parameters*.yml"), *conf_base.glob("parameters*.yaml"),
                    *conf_base.glob("parameters*/**/*.yml"), *conf_base.glob("**/parameters*.yml")})
    if not files:
        raise ParameterError(f"No parameters*.yml in {conf_base}: cannot check the parameters against it.")
    tree: dict = {}
    for path in files:
        _deep_merge(tree, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return tree


# --------------------------------------------------------------------------- checking
def _matches(pattern: str, path: str) -> bool:
    parts, keys = pattern.split("."), path.split(".")
    return len(parts) == len(keys) and all(p in ("*", k) for p, k in zip(parts, keys, strict=True))


def _lookup(table: Mapping[str, Any], path: str) -> Any:
    if path in table:
        return table[path]
    return next((value for pattern, value in table.items() if "*" in pattern and _matches(pattern, path)), None)


def _rule(schema_path: str) -> Rule | None:
    return _lookup(PATH_RULES, schema_path) or LEAF_RULES.get(schema_path.rsplit(".", 1)[-1])


def _node(tree: dict, path: str) -> Any:
    node: Any = tree
    for key in filter(None, path.split(".")):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _type_problem(value: Any, base: Any, schema_path: str) -> str | None:
    """Refuse a value whose type differs from base's (null on either side is accepted here)."""
    if value is None or base is None:
        return None
    if isinstance(base, bool):
        ok = isinstance(value, bool)
    elif isinstance(base, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(base, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(base, str):
        ok = isinstance(value, str)
    elif isinstance(base, list):
        ok = isinstance(value, (list, tuple, str))  # `--params=baselines.enabled=pop lightgcn`
    elif isinstance(base, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if ok:
        return None
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}[next(t for t in (bool, int, float, str, list, dict) if isinstance(base, t))]
    return f"must be {kind} like its default {base!r}"


def _subset_problem(value: Any, base: list) -> str | None:
    entries = value.split() if isinstance(value, str) else list(value)
    unknown = [entry for entry in entries if entry not in base]
    return f"has unknown entries {unknown}; choose among {base}" if unknown else None


def _unknown_key(path: str, key: str, known: list[str]) -> str:
    full = (path + "." if path else "") + key
    if full in MOVED_KEYS:
        return f"unknown parameter {full!r} -- it moved to {MOVED_KEYS[full]!r}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" -- did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
    where = f"under {path!r}" if path else "at the top level"
    return f"unknown parameter {(path + '.' if path else '') + key!r}{hint} (known keys {where}: {sorted(known)})"


def _walk(value: Any, base: Any, path: str, schema_path: str, root: dict) -> Iterator[str]:
    """Problems of ``value`` (at ``path``) against base's ``base`` (at ``schema_path``)."""
    if path:
        rule = _rule(schema_path)
        problem = _type_problem(value, base, schema_path) or (rule.problem(value) if rule else None)
        if problem is None and schema_path in LIST_SUBSETS and isinstance(base, list) and value is not None:
            problem = _subset_problem(value, base)
        if problem:
            yield f"{path}={value!r} {problem}"
            return
    if not isinstance(value, dict):
        return
    alias = _lookup(SCHEMA_ALIASES, schema_path) if path else None
    if alias is not None:
        base, schema_path = _node(root, alias), alias
    if not isinstance(base, dict) or (not base and alias is None):
        return  # null or an empty mapping in base: any keys
    for key, child in value.items():
        child_path = f"{path}.{key}" if path else str(key)
        if key not in base:
            yield _unknown_key(path, str(key), [str(k) for k in base])
            continue
        yield from _walk(child, base[key], child_path, f"{schema_path}.{key}" if schema_path else str(key), root)


def _template_problems(parameters: dict) -> Iterator[str]:
    prompting = parameters.get("prompting") or {}
    templates, chosen = prompting.get("train_templates"), prompting.get("test_template_id")
    if isinstance(templates, list) and isinstance(chosen, int) and not 0 <= chosen < len(templates):
        yield (f"prompting.test_template_id={chosen} must index prompting.train_templates "
               f"(0..{len(templates) - 1})")


def parameter_problems(parameters: dict, base: dict) -> list[str]:
    """Every problem of ``parameters`` (the run's merged parameters) against the base tree ``base``."""
    return [*_walk(parameters, base, "", "", base), *_template_problems(parameters)]


def validate_parameters(parameters: dict, base: dict, source: str = "conf/base") -> None:
    """Raise :class:`ParameterError` listing every unknown key, wrong type and out-of-range value."""
    problems = parameter_problems(parameters, base)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ParameterError(
            f"{len(problems)} parameter problem(s), found before any node ran:\n{listed}\n"
            f"Fix them in --params, conf/local/parameters*.yml or your --env (known keys and defaults: {source})."
        )
