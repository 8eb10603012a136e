"""The llm4rec stage's recipes: the default and the paper's, from one parameter block each."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tokenrec_pipeline.models.llm4rec import LLM4RecConfig, TrainConfig
from tokenrec_pipeline.pipelines.llm4rec.nodes import resolve_recipe, select_training_prompts


def _shipped() -> tuple[dict, dict]:
    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_llm4rec.yml").read_text())
    return params["llm4rec"], params["llm4rec_paper"]


def test_shipped_recipes_are_valid_and_differ_only_where_the_paper_block_says() -> None:
    llm4rec, paper = _shipped()
    default, paper_recipe = resolve_recipe(llm4rec, paper), resolve_recipe(llm4rec, paper, "paper")
    for recipe in (default, paper_recipe):
        LLM4RecConfig.from_dict({**recipe["model"], "cf_dim": 64})
        training = select_training_prompts(pd.DataFrame({"user_id": [0]}), pd.DataFrame({"user_id": [0]}),
                                     recipe["training"])[1]
        TrainConfig.from_dict(training)
    assert (default["model"]["item_space"], default["model"]["head"]) == ("mips", "residual_user")
    assert (paper_recipe["model"]["item_space"], paper_recipe["model"]["head"]) == ("cosine", "plain")
    assert paper_recipe["training"]["train_user_tokens"] == "full_graph"
    changed = {block: {k for k in default[block] if default[block][k] != paper_recipe[block][k]}
               for block in ("model", "training")}
    assert changed["model"] <= set(paper["model"]) and changed["training"] <= set(paper["training"])
    assert resolve_recipe({**llm4rec, "recipe": "paper"}, paper) == paper_recipe  # one switch away
    with pytest.raises(ValueError, match="llm4rec.recipe"):
        resolve_recipe({**llm4rec, "recipe": "papr"}, paper)


def test_training_prompts_follow_train_user_tokens_and_scale_with_users() -> None:
    own = pd.DataFrame({"user_id": [0, 0, 1, 2], "prompt": ["a", "b", "c", "d"]})
    folded = own.assign(prompt=["A", "B", "C", "D"])
    prompts, training = select_training_prompts(own, folded, {"train_user_tokens": "prefix_fold_in",
                                                              "samples_per_user": 2, "samples_per_epoch": 10,
                                                              "epochs": 1})
    assert prompts is folded and training == {"samples_per_epoch": 6, "epochs": 1}  # 2 x 3 users
    prompts, training = select_training_prompts(own, folded, {"train_user_tokens": "full_graph",
                                                              "samples_per_user": None, "samples_per_epoch": 10})
    assert prompts is own and training == {"samples_per_epoch": 10}
    with pytest.raises(ValueError, match="train_user_tokens"):
        select_training_prompts(own, folded, {"train_user_tokens": "graph"})
    with pytest.raises(ValueError, match="samples_per_user"):
        select_training_prompts(own, folded, {"train_user_tokens": "full_graph", "samples_per_user": 0})
