"""Nodes of the prompting stage (logic in ``tokenrec_pipeline.data.prompts``)."""

from __future__ import annotations

import logging

import pandas as pd

from tokenrec_pipeline.data.prompts import PromptConfig, build_prompt_samples, with_row_user_tokens
from tokenrec_pipeline.models.tokenizers import FittedTokenizer
from tokenrec_pipeline.serving.recommend import new_user_tokens

logger = logging.getLogger(__name__)


def build_prompts(interactions_split: pd.DataFrame, user_tokens: pd.DataFrame, item_tokens: pd.DataFrame,
                  cf_embeddings: dict, user_tokenizer: FittedTokenizer, prompting: dict,
                  fold_in: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train / validation / test prompt tables written in the users' and items' ID tokens, and the train
    prompts once more with each row's user tokens folded in from that row's prefix only.

    ``train_prompts`` carry the user's own tokens (the CF model saw the prompt's target);
    ``fold_in_train_prompts`` carry tokens of the prefix's fold-in (``cf_pretraining.fold_in``, then the
    fitted user tokenizer), the way a test-time or brand-new user is tokenised. Which one LLM4Rec trains on
    is ``llm4rec.training.train_user_tokens``.
    """
    config = PromptConfig.from_params(prompting, seed)
    token_of_user = user_tokens.set_index("id")["tokens"]
    train, valid, test = build_prompt_samples(
        interactions_split, token_of_user, item_tokens.set_index("id")["tokens"], config
    )
    folded = new_user_tokens([list(h) for h in train["history"]], cf_embeddings, user_tokenizer,
                             user_tokenizer.token_prefix, method=fold_in)
    fold_in_train = with_row_user_tokens(train, token_of_user, folded)
    changed = float((fold_in_train["prompt"] != train["prompt"]).mean())
    logger.info("Prompts: %d train (%.0f%% with other user tokens when folded in from the prefix), %d valid, "
                "%d test. Example: %s", len(train), 100 * changed, len(valid), len(test),
                train["prompt"].iloc[-1][:200])
    return train, fold_in_train, valid, test
