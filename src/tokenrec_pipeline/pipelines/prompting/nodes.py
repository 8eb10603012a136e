"""Nodes of the prompting stage (logic in ``tokenrec_pipeline.prompts``)."""

from __future__ import annotations

import logging

import pandas as pd

from tokenrec_pipeline.prompts import PromptConfig, build_prompt_samples

logger = logging.getLogger(__name__)


def build_prompts(interactions_split: pd.DataFrame, user_tokens: pd.DataFrame, item_tokens: pd.DataFrame,
                  prompting: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / validation / test prompt tables written in the users' and items' ID tokens."""
    config = PromptConfig.from_params(prompting, seed)
    train, valid, test = build_prompt_samples(
        interactions_split, user_tokens.set_index("id")["tokens"], item_tokens.set_index("id")["tokens"], config
    )
    logger.info("Prompts: %d train, %d valid, %d test. Example: %s", len(train), len(valid), len(test),
                train["prompt"].iloc[-1][:200])
    return train, valid, test
