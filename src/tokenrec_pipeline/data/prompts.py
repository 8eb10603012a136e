"""Prompts written in ID tokens, and the training / evaluation samples they carry.

A prompt template is a string with ``{user}`` (the user's K tokens) and optionally ``{history}``
(the item tokens of the user's most recent items, joined by ``", "``), e.g.::

    "According to what items the user_{user} has interacted with: {history}. What next?"
    -> "According to what items the user_<u1-128><u2-21><u3-35> has interacted with:
        item_<i1-42><i2-12><i3-98>, item_<i1-42><i2-12><i3-87>. What next?"

Samples (one row each; ``history`` is the user's whole input history as item ids, used to exclude
those items from ranking and negatives; only the last ``history_length`` appear in the prompt):

* ``train``: for every seen user's train sequence ``s_1..s_n``, the prefix ``s_1..s_{t-1}``
  predicts ``s_t`` (t >= 1 + min_prefix); at most ``max_prefixes_per_user`` prefixes per user
  (the most recent ones) so CPU runs stay small. The user tokens are the user's own (from the CF model
  trained on all their train items, the target included); :func:`with_row_user_tokens` writes the same
  rows with other user tokens per row, e.g. folded in from the prefix alone (``fold_in_train_prompts``).
* ``valid``: history = train items, target = the validation item (seen users).
* ``test``: seen users: history = train + valid, target = test; unseen users: history = their
  ``unseen_history``, target = ``unseen_test``. One row per user per variant: ``full`` (a training
  template), ``unseen_prompt`` (a template never used in training), ``user_only`` (user tokens only).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

PROMPT_COLUMNS = ["split", "variant", "user_group", "user_id", "target_item", "history", "template_id", "prompt"]


class PromptConfigError(ValueError):
    """A prompting parameter is invalid (the message names it)."""


def template_fields(template: str) -> set[str]:
    """Placeholders used by ``template``."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class PromptConfig:
    """Parameters of ``parameters_prompting.yml`` (see there for meanings); the defaults are that file's, kept in
    step by ``tests/test_parameter_defaults.py`` (the templates have none: they always come from the file)."""

    train_templates: tuple[str, ...]
    test_template_id: int
    unseen_template: str
    user_only_template: str
    history_length: int = 10
    history_order: str = "chronological"
    item_text: str = "item_{item}"
    history_separator: str = ", "
    min_prefix: int = 1
    max_prefixes_per_user: int | None = 5
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict, seed: int) -> PromptConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "seed"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise PromptConfigError(f"Unknown parameter prompting.{unknown[0]}; valid: {sorted(known)}")
        config = cls(**{**params, "train_templates": tuple(params.get("train_templates", ())), "seed": seed})
        config.validate()
        return config

    def validate(self) -> None:
        if not self.train_templates:
            raise PromptConfigError("prompting.train_templates must list at least one template.")
        for i, template in enumerate(self.train_templates + (self.unseen_template, self.user_only_template)):
            fields_used = template_fields(template)
            name = f"prompting.train_templates[{i}]" if i < len(self.train_templates) else (
                "prompting.unseen_template" if i == len(self.train_templates) else "prompting.user_only_template")
            if "user" not in fields_used or fields_used - {"user", "history"}:
                raise PromptConfigError(f"{name} must use {{user}} and optionally {{history}} only: {template!r}")
        if "history" in template_fields(self.user_only_template):
            raise PromptConfigError("prompting.user_only_template must not use {history}.")
        if self.unseen_template in self.train_templates:
            raise PromptConfigError("prompting.unseen_template must not be one of the training templates.")
        if not 0 <= self.test_template_id < len(self.train_templates):
            raise PromptConfigError(
                f"prompting.test_template_id={self.test_template_id} is not a training template index.")
        if self.history_order not in ("chronological", "shuffled"):
            raise PromptConfigError(f"prompting.history_order={self.history_order!r}: use chronological or shuffled.")
        if self.history_length < 1 or self.min_prefix < 1:
            raise PromptConfigError("prompting.history_length and prompting.min_prefix must be >= 1.")
        if "{item}" not in self.item_text:
            raise PromptConfigError("prompting.item_text must contain {item}.")


def render_prompt(template: str, user_tokens: str, history_tokens: list[str], config: PromptConfig,
                  rng: np.random.Generator | None = None) -> str:
    """Fill one template: the last ``history_length`` items, in time order or shuffled."""
    recent = list(history_tokens[-config.history_length:])
    if config.history_order == "shuffled" and rng is not None:
        recent = [recent[i] for i in rng.permutation(len(recent))]
    history = config.history_separator.join(config.item_text.format(item=t) for t in recent)
    return template.format(user=user_tokens, history=history)


def _sequences(split: pd.DataFrame, names: tuple[str, ...]) -> pd.Series:
    """Per user, the item ids of the given splits in time order (rows are already ordered)."""
    rows = split[split["split"].isin(names)]
    return rows.groupby("user_id", sort=True)["item_id"].agg(list)


def _targets(split: pd.DataFrame, name: str) -> pd.Series:
    return split[split["split"] == name].set_index("user_id")["item_id"].sort_index()


def build_prompt_samples(
    interactions_split: pd.DataFrame, user_tokens: pd.Series, item_tokens: pd.Series, config: PromptConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation and test prompt tables (columns :data:`PROMPT_COLUMNS`).

    Args:
        interactions_split: the preprocessing split table.
        user_tokens: token string per ``user_id`` (index), seen and unseen users.
        item_tokens: token string per ``item_id`` (index).
        config: templates and limits.
    """
    rng = np.random.default_rng(config.seed)
    item_str = item_tokens.to_numpy()
    n_templates = len(config.train_templates)

    def row(split, variant, group, user, target, history, template_id, template):
        prompt = render_prompt(template, user_tokens.loc[user], [item_str[i] for i in history], config, rng)
        return (split, variant, group, int(user), int(target), [int(i) for i in history], template_id, prompt)

    train_rows = []
    for user, sequence in _sequences(interactions_split, ("train",)).items():
        positions = range(config.min_prefix, len(sequence))
        if config.max_prefixes_per_user is not None:
            positions = list(positions)[-config.max_prefixes_per_user:]
        for t in positions:
            template_id = int(rng.integers(n_templates))
            train_rows.append(row("train", "full", "seen", user, sequence[t], sequence[:t], template_id,
                                  config.train_templates[template_id]))

    seen_template = config.train_templates[config.test_template_id]
    train_hist = _sequences(interactions_split, ("train",))
    valid_rows = [row("valid", "full", "seen", u, target, train_hist.loc[u], config.test_template_id, seen_template)
                  for u, target in _targets(interactions_split, "valid").items()]

    variants = [("full", config.test_template_id, seen_template), ("unseen_prompt", -1, config.unseen_template),
                ("user_only", -2, config.user_only_template)]
    test_rows = []
    for group, hist_splits, target_split in (("seen", ("train", "valid", "test_history"), "test"),
                                             ("unseen", ("unseen_history",), "unseen_test")):
        histories = _sequences(interactions_split, hist_splits)
        for user, target in _targets(interactions_split, target_split).items():
            for variant, template_id, template in variants:
                test_rows.append(row("test", variant, group, user, target, histories.loc[user], template_id, template))

    frames = tuple(pd.DataFrame(rows, columns=PROMPT_COLUMNS) for rows in (train_rows, valid_rows, test_rows))
    if frames[0].empty:
        raise PromptConfigError("No training prompts: every train sequence is shorter than prompting.min_prefix + 1.")
    return frames


def with_row_user_tokens(prompts: pd.DataFrame, user_tokens: pd.Series, row_tokens: list[str]) -> pd.DataFrame:
    """The same prompt rows with each row's user tokens replaced by ``row_tokens[row]``.

    Why: a training prompt's user tokens come from a CF model trained on the prompt's own target, so a
    language model can read the target off them and ignore the history; at test time it cannot. Tokens
    folded in from the prefix the prompt shows are what a test-time (or new) user looks like.

    Args:
        prompts: A prompt table (columns :data:`PROMPT_COLUMNS`) written with ``user_tokens``.
        user_tokens: Token string per ``user_id`` (index) the prompts were written with.
        row_tokens: One token string per row of ``prompts``.
    """
    if len(row_tokens) != len(prompts):
        raise ValueError(f"{len(row_tokens)} user token strings for {len(prompts)} prompts.")
    old = user_tokens.loc[prompts["user_id"]].to_numpy()
    out = prompts.copy()
    # User and item tokens have distinct prefixes, so the user's token string occurs only where {user} was.
    rows = zip(prompts["prompt"], old, row_tokens, strict=True)
    out["prompt"] = [prompt.replace(before, after) for prompt, before, after in rows]
    return out


def sample_prompt_users(prompts: pd.DataFrame, max_users: int | None, seed: int, parameter: str) -> pd.DataFrame:
    """The prompts of at most ``max_users`` users, drawn once with ``seed`` (so early stopping compares epochs
    on the same users); all prompts when ``max_users`` is ``None`` or covers every user. Row order is kept.

    Args:
        prompts: A prompt table with a ``user_id`` column (validation: one prompt per user).
        max_users: Users to keep (``None``: all).
        seed: Seeds the draw.
        parameter: The parameter's name, for the error message.
    """
    if max_users is None:
        return prompts
    if isinstance(max_users, bool) or not isinstance(max_users, (int, np.integer)) or max_users < 1:
        raise ValueError(f"{parameter} must be a positive integer or null, got {max_users!r}.")
    users = prompts["user_id"].drop_duplicates().to_numpy()
    if len(users) <= max_users:
        return prompts
    kept = np.random.default_rng(seed).choice(users, size=int(max_users), replace=False)
    return prompts[prompts["user_id"].isin(kept)]
