"""Prompt rendering and samples: tokens in the right places, no template leaks the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tokenrec_pipeline.data.prompts import PromptConfig, PromptConfigError, build_prompt_samples, render_prompt

TEMPLATES = ["User {user} had {history}. Next?", "Recommend to {user}."]


def _config(**overrides) -> PromptConfig:
    params = {"train_templates": TEMPLATES, "test_template_id": 0, "unseen_template": "New: {user} after {history}",
              "user_only_template": "Recommend to {user}.", "history_length": 2, **overrides}
    return PromptConfig.from_params(params, seed=0)


def _split() -> pd.DataFrame:
    rows = [
        (0, i, t, s) for t, (i, s) in enumerate([(0, "train"), (1, "train"), (2, "train"), (3, "valid"), (4, "test")])
    ]
    rows += [
        (1, i, t, s) for t, (i, s) in enumerate([(2, "unseen_history"), (0, "unseen_history"), (5, "unseen_test")])
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])


USER_TOKENS = pd.Series(["<u1-1><u2-2>", "<u1-3><u2-4>"])
ITEM_TOKENS = pd.Series([f"<i1-{i}><i2-{i}>" for i in range(6)])


def test_render_keeps_the_most_recent_items_in_order():
    prompt = render_prompt(TEMPLATES[0], "<u1-1>", ["<i1-0>", "<i1-1>", "<i1-2>"], _config())
    assert prompt == "User <u1-1> had item_<i1-1>, item_<i1-2>. Next?"


def test_samples_follow_the_protocol_and_never_show_the_target():
    train, valid, test = build_prompt_samples(_split(), USER_TOKENS, ITEM_TOKENS, _config())
    assert train[["target_item"]].values.ravel().tolist() == [1, 2]  # prefixes [0] -> 1, [0, 1] -> 2
    assert train["history"].map(list).tolist() == [[0], [0, 1]]
    assert list(valid.iloc[0]["history"]) == [0, 1, 2] and valid.iloc[0]["target_item"] == 3
    seen = test[(test["user_group"] == "seen") & (test["variant"] == "full")].iloc[0]
    assert list(seen["history"]) == [0, 1, 2, 3] and seen["target_item"] == 4
    assert seen["prompt"] == "User <u1-1><u2-2> had item_<i1-2><i2-2>, item_<i1-3><i2-3>. Next?"
    unseen = test[(test["user_group"] == "unseen") & (test["variant"] == "unseen_prompt")].iloc[0]
    assert unseen["prompt"] == "New: <u1-3><u2-4> after item_<i1-2><i2-2>, item_<i1-0><i2-0>"
    assert set(test["variant"]) == {"full", "unseen_prompt", "user_only"}
    for frame in (train, valid, test):
        for row in frame.itertuples():
            assert ITEM_TOKENS[row.target_item] not in row.prompt


def test_user_only_variant_has_no_items():
    _, _, test = build_prompt_samples(_split(), USER_TOKENS, ITEM_TOKENS, _config())
    user_only = test[test["variant"] == "user_only"]
    assert (user_only["prompt"] == "Recommend to " + USER_TOKENS[user_only["user_id"]].to_numpy() + ".").all()


def test_prefix_cap_keeps_the_most_recent():
    train, _, _ = build_prompt_samples(_split(), USER_TOKENS, ITEM_TOKENS, _config(max_prefixes_per_user=1))
    assert train["target_item"].tolist() == [2]


@pytest.mark.parametrize("overrides, parameter", [
    ({"unseen_template": TEMPLATES[0]}, "unseen_template"),
    ({"user_only_template": "{user} {history}"}, "user_only_template"),
    ({"train_templates": ["no placeholders"]}, "train_templates[0]"),
    ({"test_template_id": 5}, "test_template_id"),
    ({"history_order": "random"}, "history_order"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_parameters_are_named(overrides, parameter):
    with pytest.raises(PromptConfigError, match=parameter.replace("[", r"\[").replace("]", r"\]")):
        _config(**overrides)


def test_fold_in_train_prompts_never_see_the_target_or_later_items():
    from tokenrec_pipeline.core.artefacts import encode_fold_in_method

    """Each fold-in train prompt's user tokens are the fitted tokenizer's tokens of the fold-in of exactly
    the prompt's prefix: changing the CF vectors of the target or of later items changes nothing."""
    import numpy as np
    import torch

    from tokenrec_pipeline.models.tokenizers import codes_to_token_strings, fit_tokenizer
    from tokenrec_pipeline.pipelines.prompting.nodes import build_prompts

    split = _split()
    split = pd.concat([split, pd.DataFrame([(0, 5, 9, "train")], columns=split.columns)])  # user 0: train 0,1,2,5
    split = split.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    fitted = fit_tokenizer(torch.randn(300, 4, generator=torch.Generator().manual_seed(0)),
                           {"quantizer": "kmeans", "n_codebooks": 2, "codebook_size": 4, "seed": 0, "device": "cpu"})
    basis = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * 3
    cf = {"item_fold_in_basis": basis, "item_degree": torch.tensor([3.0, 2, 2, 1, 1, 1]),
          "user_fold_in_scale": torch.tensor([0.7]), "fold_in_method": encode_fold_in_method("mean")}
    users = pd.DataFrame({"id": [0, 1], "tokens": USER_TOKENS})
    items = pd.DataFrame({"id": range(6), "tokens": ITEM_TOKENS})
    params = {"train_templates": TEMPLATES, "test_template_id": 0, "unseen_template": "New: {user} after {history}",
              "user_only_template": "Recommend to {user}.", "history_length": 2}
    fitted.token_prefix = "u"  # the tokenization stage sets it; saved with the tokenizer

    def run(embeddings):
        return build_prompts(split, users, items, embeddings, fitted, params, "mean", 0)

    train, fold_in, valid, _ = run(cf)
    assert len(fold_in) == len(train) == 3 and fold_in["target_item"].tolist() == [1, 2, 5]
    assert (fold_in.drop(columns="prompt").astype(str) == train.drop(columns="prompt").astype(str)).all().all()
    for row in fold_in.itertuples():
        prefix = list(row.history)
        expected = codes_to_token_strings(fitted.encode(basis[prefix].mean(0, keepdim=True) * 0.7), "u")[0]
        assert row.prompt == train.loc[row.Index, "prompt"].replace(USER_TOKENS[0], expected)
        # Scramble the target's and every later item's CF vector: this row's prompt stays the same.
        scrambled = basis.clone()
        later = [i for i in range(6) if i not in prefix]
        scrambled[later] = torch.randn(len(later), 4, generator=torch.Generator().manual_seed(row.Index)) * 50
        assert run({**cf, "item_fold_in_basis": scrambled})[1].loc[row.Index, "prompt"] == row.prompt
    assert np.array_equal(valid["prompt"], run(cf)[2]["prompt"])  # valid / test keep the users' own tokens


def test_validation_subsample_is_seeded_and_keeps_whole_users() -> None:
    from tokenrec_pipeline.data.prompts import sample_prompt_users

    prompts = pd.DataFrame({"user_id": np.repeat(np.arange(50), 2), "prompt": [f"p{i}" for i in range(100)]})
    first = sample_prompt_users(prompts, 10, seed=3, parameter="llm4rec.validation.max_users")
    again = sample_prompt_users(prompts, 10, seed=3, parameter="llm4rec.validation.max_users")
    assert first["user_id"].nunique() == 10 and len(first) == 20  # both prompts of each drawn user
    pd.testing.assert_frame_equal(first, again)  # the same users every epoch / run
    assert list(first.index) == sorted(first.index)  # row order kept
    assert sample_prompt_users(prompts, 10, seed=4, parameter="x")["user_id"].tolist() != first["user_id"].tolist()
    assert sample_prompt_users(prompts, None, seed=3, parameter="x") is prompts
    assert len(sample_prompt_users(prompts, 500, seed=3, parameter="x")) == 100
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="llm4rec.validation.max_users must be a positive integer or null"):
            sample_prompt_users(prompts, bad, seed=3, parameter="llm4rec.validation.max_users")
