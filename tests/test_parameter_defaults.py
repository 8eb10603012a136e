"""Defaults live in ``conf/base/parameters_*.yml`` only.

For every parameter block that feeds a config dataclass, built the way its node builds it:

* an unknown key in the block fails (the node's own path rejects it);
* a dataclass field the block lacks fails, unless the node injects it (listed per block, with the reason) or the
  block's model does not use it;
* every dataclass default equals the block's value for the same key, so ``CFConfig()``, ``LLM4RecConfig()``, ...
  describe the model ``kedro run`` trains and no second, conflicting default can come back. Where one dataclass
  serves several blocks (LightGCN and MF, SASRec and BERT4Rec, the default and the paper's recipe), its defaults are
  the first block's and the others may differ only in the keys listed as their own.

Nothing is trained: only the configs are built.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tokenrec_pipeline.data.prompts import PromptConfig
from tokenrec_pipeline.data.synthetic import SyntheticConfig
from tokenrec_pipeline.models.autoregressive import AutoregressiveConfig, AutoregressiveTrainConfig
from tokenrec_pipeline.models.autoregressive.config import SAVED_CONFIG_DEFAULTS as AUTOREGRESSIVE_SAVED
from tokenrec_pipeline.models.cf import CFConfig
from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, TrainConfig
from tokenrec_pipeline.models.llm4rec.config import SAVED_CONFIG_DEFAULTS as LLM4REC_SAVED
from tokenrec_pipeline.models.sequential import SequentialConfig
from tokenrec_pipeline.models.tokenizers import TokenizerConfig
from tokenrec_pipeline.pipelines.autoregressive.nodes import SHARED_MODEL_KEYS
from tokenrec_pipeline.pipelines.llm4rec.nodes import resolve_recipe, select_training_prompts
from tokenrec_pipeline.pipelines.tokenization.nodes import SIDES, side_tokenizer_config
from tokenrec_pipeline.training.distributed import DistributedSettings

CONF = PROJECT_ROOT / "conf" / "base"


def _parameters() -> dict:
    tree: dict = {}
    for path in sorted(CONF.glob("parameters*.yml")):
        block = yaml.safe_load(path.read_text()) or {}
        assert not set(block) & set(tree), f"{path.name} repeats top-level keys {sorted(set(block) & set(tree))}"
        tree.update(block)
    return tree


PARAMS = _parameters()
SEED = PARAMS["seed"]
CF_DIM = PARAMS["cf_pretraining"]["lightgcn"]["embedding_dim"]
TOKENIZER = PARAMS["tokenizer"]


def _recipe(name: str) -> dict:
    return resolve_recipe(PARAMS["llm4rec"], PARAMS["llm4rec_paper"], name)


def _training_block(training: Mapping) -> dict:
    """What ``train_recipe`` hands ``TrainConfig``: ``select_training_prompts`` takes ``train_user_tokens`` and
    turns ``samples_per_user`` into ``samples_per_epoch``."""
    prompts = pd.DataFrame({"user_id": [0, 1]})
    return select_training_prompts(prompts, prompts, training)[1]


def _autoregressive_block() -> dict:
    """``autoregressive.model`` with the ``llm4rec.model`` keys the node shares (as ``train_autoregressive_model``)."""
    return {**{key: PARAMS["llm4rec"]["model"][key] for key in SHARED_MODEL_KEYS}, **PARAMS["autoregressive"]["model"]}


@dataclasses.dataclass(frozen=True)
class Case:
    """One (parameter block, dataclass) pair.

    Attributes:
        block: the dotted path of the block (for the test id and messages).
        cls: the dataclass the block feeds.
        values: the block as ``conf/base`` writes it (a recipe resolved, shared keys included).
        build: the node's path from ``values`` to the dataclass (what it takes out or injects included).
        injected: fields the node sets itself, not from this block, and why.
        unused: fields the block's model does not use (so the block need not name them), and why.
        own: keys whose value may differ from the dataclass default: the defaults describe another block.
    """

    block: str
    cls: type
    values: Callable[[], dict]
    build: Callable[[dict], Any]
    injected: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unused: Mapping[str, str] = dataclasses.field(default_factory=dict)
    own: frozenset[str] = frozenset()


SEED_WHY = "the run's `seed` parameter (parameters.yml), set by the node"

CASES = [
    Case("cf_pretraining.lightgcn", CFConfig, lambda: dict(PARAMS["cf_pretraining"]["lightgcn"]),
         lambda values: CFConfig.from_dict({**values, "seed": SEED}), injected={"seed": SEED_WHY}),
    Case("baselines.mf", CFConfig, lambda: dict(PARAMS["baselines"]["mf"]),
         lambda values: CFConfig.from_dict({**values, "seed": SEED}), injected={"seed": SEED_WHY},
         unused={"num_layers": "LightGCN's propagation depth; MF has no propagation"},
         own=frozenset({"model", "lr"})),
    Case("baselines.sasrec", SequentialConfig, lambda: dict(PARAMS["baselines"]["sasrec"]),
         lambda values: SequentialConfig.from_dict({**values, "seed": SEED}), injected={"seed": SEED_WHY},
         unused={"mask_prob": "BERT4Rec's masking share; SASRec trains on next items"}),
    Case("baselines.bert4rec", SequentialConfig, lambda: dict(PARAMS["baselines"]["bert4rec"]),
         lambda values: SequentialConfig.from_dict({**values, "seed": SEED}), injected={"seed": SEED_WHY},
         own=frozenset({"model"})),
    *(Case(f"tokenizer ({side} side)", TokenizerConfig, lambda: dict(TOKENIZER),
           lambda values, side=side: side_tokenizer_config(values, values[side], SEED),
           injected={"seed": SEED_WHY, "param_prefix": "how error messages name the block; not a parameter"})
      for side in SIDES),  # values: the shared keys; a side's `overrides` replace some of them on purpose
    Case("prompting", PromptConfig, lambda: dict(PARAMS["prompting"]),
         lambda values: PromptConfig.from_params(values, SEED), injected={"seed": SEED_WHY}),
    *(Case(f"llm4rec.model ({recipe} recipe)", LLM4RecConfig, lambda recipe=recipe: dict(_recipe(recipe)["model"]),
           lambda values: LLM4RecConfig.from_dict({**values, "cf_dim": CF_DIM, "seed": SEED}),
           injected={"cf_dim": "the CF item embeddings' width, read from cf_embeddings", "seed": SEED_WHY},
           own=frozenset(PARAMS["llm4rec_paper"]["model"]) if recipe == "paper" else frozenset())
      for recipe in ("default", "paper")),
    *(Case(f"llm4rec.training ({recipe} recipe)", TrainConfig, lambda recipe=recipe: dict(_recipe(recipe)["training"]),
           lambda values: TrainConfig.from_dict({**_training_block(values), "seed": SEED}), injected={"seed": SEED_WHY},
           own=frozenset(PARAMS["llm4rec_paper"]["training"]) if recipe == "paper" else frozenset())
      for recipe in ("default", "paper")),
    Case("llm4rec.distributed", DistributedSettings, lambda: dict(PARAMS["llm4rec"]["distributed"]),
         DistributedSettings.from_dict),
    Case("autoregressive.model (+ llm4rec.model's shared keys)", AutoregressiveConfig, _autoregressive_block,
         lambda values: AutoregressiveConfig.from_dict({**values, "n_codebooks": TOKENIZER["n_codebooks"],
                                                        "codebook_size": TOKENIZER["codebook_size"],
                                                        "item_token_prefix": TOKENIZER["item"]["token_prefix"],
                                                        "seed": SEED}),
         injected={"n_codebooks": "the fitted item tokenizer's K", "codebook_size": "the fitted item tokenizer's L",
                   "item_token_prefix": "the fitted item tokenizer's token prefix", "seed": SEED_WHY}),
    Case("autoregressive.training", AutoregressiveTrainConfig, lambda: dict(PARAMS["autoregressive"]["training"]),
         lambda values: AutoregressiveTrainConfig.from_dict({**values, "seed": SEED}), injected={"seed": SEED_WHY}),
    Case("ingestion.synthetic", SyntheticConfig, lambda: dict(PARAMS["ingestion"]["synthetic"]),
         SyntheticConfig.from_params),
]
"""Every block of ``conf/base`` that feeds a config dataclass, and how its node builds it."""


def _normalise(value: Any) -> Any:
    """YAML lists are the dataclasses' tuples."""
    return list(value) if isinstance(value, tuple) else value


def _block_keys(case: Case) -> set[str]:
    keys = set(case.values())
    return keys - set(SIDES) if case.cls is TokenizerConfig else keys  # the side blocks are not fields


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.block)
def test_the_block_builds_its_dataclass_and_an_unknown_key_fails(case: Case) -> None:
    config = case.build(case.values())
    assert isinstance(config, case.cls)
    with pytest.raises(ValueError, match="not_a_parameter"):
        case.build({**case.values(), "not_a_parameter": 1})


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.block)
def test_the_block_names_every_field_the_node_does_not_inject(case: Case) -> None:
    fields = {f.name for f in dataclasses.fields(case.cls)}
    assert not set(case.injected) - fields, f"{case.block}: injected names no field {set(case.injected) - fields}"
    assert not set(case.unused) - fields, f"{case.block}: unused names no field {set(case.unused) - fields}"
    assert not set(case.injected) & _block_keys(case), f"{case.block} sets injected fields"
    missing = fields - _block_keys(case) - set(case.injected) - set(case.unused)
    assert not missing, (f"{case.block} lacks {sorted(missing)}: add them to conf/base (the defaults live there) "
                         f"or, when the node sets them, list them as injected here")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.block)
def test_every_dataclass_default_is_the_block_value(case: Case) -> None:
    values = case.values()
    conflicts = {}
    for f in dataclasses.fields(case.cls):
        if f.name not in values or f.name in case.own:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue  # no default: the value always comes from the block
        if _normalise(default) != _normalise(values[f.name]):
            conflicts[f.name] = (default, values[f.name])
    assert not conflicts, (f"{case.cls.__name__} defaults disagree with {case.block} (default, YAML): {conflicts}; "
                           "make the dataclass default the YAML value")


def test_the_built_config_is_the_default_config_with_the_injected_and_own_fields() -> None:
    """What the tests above add up to, once for the main model: ``kedro run``'s LightGCN is ``CFConfig()``."""
    assert CFConfig.from_dict({**PARAMS["cf_pretraining"]["lightgcn"], "seed": SEED}) == CFConfig(seed=SEED)
    default = _recipe("default")
    assert LLM4RecConfig.from_dict({**default["model"], "cf_dim": CF_DIM, "seed": SEED}) == LLM4RecConfig(
        cf_dim=CF_DIM, seed=SEED)
    training = _training_block(default["training"])
    assert TrainConfig.from_dict({**training, "seed": SEED}) == TrainConfig(
        samples_per_epoch=training["samples_per_epoch"], seed=SEED)


@pytest.mark.parametrize("cls, saved_defaults", [(LLM4RecConfig, LLM4REC_SAVED),
                                                 (AutoregressiveConfig, AUTOREGRESSIVE_SAVED)])
def test_a_saved_config_without_the_newer_keys_keeps_their_old_meaning(cls: type, saved_defaults: dict) -> None:
    """The defaults moved to the YAML's; a model folder written before a key existed still loads as it meant."""
    written = dataclasses.asdict(cls.from_dict({"backbone": "b", "seed": 3}))
    assert cls.from_saved(written) == cls.from_dict(written)  # a complete saved config is read as written
    old = cls.from_saved({key: value for key, value in written.items() if key not in saved_defaults})
    assert {key: getattr(old, key) for key in saved_defaults} == saved_defaults
    assert {key: getattr(cls(), key) for key in saved_defaults} != saved_defaults  # the defaults did move


NOT_FED_BY_A_BLOCK = {"LoopConfig": "the base class of TrainConfig and AutoregressiveTrainConfig, which are cases"}


def test_every_config_dataclass_of_the_package_has_a_case() -> None:
    """A new ``@dataclass class ...Config`` / ``...Settings`` in the package gets a case above."""
    names = set()
    for path in (PROJECT_ROOT / "src" / "tokenrec_pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            decorators = {ast.unparse(d).split("(")[0] for d in getattr(node, "decorator_list", [])}
            if isinstance(node, ast.ClassDef) and decorators & {"dataclass", "dataclasses.dataclass"} and \
                    node.name.endswith(("Config", "Settings")):
                names.add(node.name)
    covered = {case.cls.__name__ for case in CASES} | set(NOT_FED_BY_A_BLOCK)
    assert names <= covered, f"config dataclasses without a case: {sorted(names - covered)}"
    assert len(names) >= 10
