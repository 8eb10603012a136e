"""Nodes of the recommend stage (logic in ``tokenrec_pipeline.serving.recommend``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tokenrec_pipeline.data.prompts import PromptConfig
from tokenrec_pipeline.evaluation.item_index import ItemIndex
from tokenrec_pipeline.models.llm4rec import LLM4Rec
from tokenrec_pipeline.models.tokenizers import FittedTokenizer
from tokenrec_pipeline.models.tokenizers.tokens import token_strings_to_codes
from tokenrec_pipeline.models.tokenrec import retrieve
from tokenrec_pipeline.serving.recommend import (
    ON_UNKNOWN_ITEM,
    Request,
    UnknownIdError,
    add_new_items,
    build_request_prompts,
    parse_requests,
    requests_from_frame,
    requests_to_frame,
)

logger = logging.getLogger(__name__)


def requests_from_parameters(recommend: dict) -> pd.DataFrame:
    """``recommend.users`` (known ids) and ``recommend.histories`` (new users) -> the request table."""
    return requests_to_frame(parse_requests(recommend))


def example_recommendation_requests(user_map: pd.DataFrame, interactions_split: pd.DataFrame,
                                    item_map: pd.DataFrame) -> pd.DataFrame:
    """A small request table from the training data (two known users, one new user's history): the
    template of the MLflow model's input, from which its signature is inferred. Its history row has no
    ``request_id`` so that the signature marks every column optional, as they are."""
    seen = user_map.loc[user_map["user_group"] == "seen", "original_user"].astype(str).head(2).tolist()
    original_item = item_map.set_index("item_id")["original_item"].astype(str)
    first_user = interactions_split.loc[interactions_split["split"] == "train", "user_id"].iloc[0]
    items = interactions_split.loc[interactions_split["user_id"] == first_user, "item_id"].head(3)
    requests = [Request(f"user:{u}", u, ()) for u in seen]
    requests.append(Request("", None, tuple(original_item[items].tolist())))
    return requests_to_frame(requests).replace({"request_id": {"": None}})


def prepare_requests(recommendation_requests: pd.DataFrame, interactions_split: pd.DataFrame, user_map: pd.DataFrame,
                     item_map: pd.DataFrame, user_tokens: pd.DataFrame, item_tokens: pd.DataFrame,
                     cf_embeddings: dict, user_tokenizer: FittedTokenizer, prompting: dict,
                     on_unknown_item: str, seed: int) -> pd.DataFrame:
    """One prompt per request: a known user's tokens and recent items, or a new user's tokens from
    their history (fold-in + the fitted user tokenizer, no retraining)."""
    if on_unknown_item not in ON_UNKNOWN_ITEM:
        raise ValueError(f"recommend.on_unknown_item must be one of {list(ON_UNKNOWN_ITEM)}, got {on_unknown_item!r}.")
    return build_request_prompts(
        requests_from_frame(recommendation_requests), interactions_split, user_map, item_map, user_tokens, item_tokens,
        cf_embeddings, user_tokenizer, PromptConfig.from_params(prompting, seed), user_tokenizer.token_prefix,
        on_unknown_item,
    )


def recommend_items(llm4rec_model: LLM4Rec, item_index: ItemIndex, recommendation_prompts: pd.DataFrame,
                    item_map: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """Top-K items per request in one pass (no beam search), history excluded, real items only."""
    try:
        whole = not isinstance(top_k, bool) and float(top_k).is_integer() and int(top_k) >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ValueError(f"recommend.top_k must be an integer >= 1, got {top_k!r}.")
    k = min(int(top_k), item_index.ntotal)  # more than the catalogue cannot be returned
    ids, scores = retrieve(llm4rec_model, item_index, list(recommendation_prompts["prompt"]),
                           [list(h) for h in recommendation_prompts["history"]], k)
    original = item_map.set_index("item_id")["original_item"].astype(str)
    rows = [
        {"request_id": req, "user": user if isinstance(user, str) else "", "rank": rank + 1, "item_id": int(item),
         "item": original.get(int(item)), "score": float(score)}
        for req, user, item_row, score_row in zip(recommendation_prompts["request_id"], recommendation_prompts["user"],
                                                  ids, scores, strict=True)
        for rank, (item, score) in enumerate(zip(item_row, score_row, strict=True)) if item >= 0
    ]
    table = pd.DataFrame(rows, columns=["request_id", "user", "rank", "item_id", "item", "score"])
    for req, part in table.groupby("request_id", sort=False):
        logger.info(
            "%s -> %s", req, ", ".join(f"{i} ({s:.3f})" for i, s in zip(part["item"], part["score"], strict=True))
        )
    return table


def add_items_to_catalogue(new_item_interactions: pd.DataFrame, item_index: ItemIndex, item_map: pd.DataFrame,
                           item_tokens: pd.DataFrame, user_map: pd.DataFrame, cf_embeddings: dict,
                           item_tokenizer: FittedTokenizer) -> tuple[ItemIndex, pd.DataFrame, pd.DataFrame]:
    """New items (columns ``user``, ``item``: original ids; users must be known) join the index, the
    item map and the token table — recommendable at once, no language-model retraining."""
    missing = {"user", "item"} - set(new_item_interactions.columns)
    if missing:
        raise ValueError(f"new_item_interactions: missing column(s) {sorted(missing)}; expected 'user' and 'item'.")
    frame = new_item_interactions.astype({"user": str, "item": str})
    known_items = set(item_map["original_item"].astype(str))
    clash = sorted(set(frame["item"]) & known_items)
    if clash:
        raise ValueError(f"new_item_interactions: item(s) {clash[:10]} already exist in the catalogue.")
    user_ids = pd.Series(user_map["user_id"].to_numpy(), index=user_map["original_user"].astype(str))
    n_seen = cf_embeddings["user_embeddings"].shape[0]
    unknown = sorted(set(frame["user"]) - set(user_ids.index))
    if unknown:
        raise UnknownIdError(f"new_item_interactions: unknown user(s) {unknown[:10]}.")
    frame["user_id"] = frame["user"].map(user_ids)
    frame = frame[frame["user_id"] < n_seen]  # fold-in uses trained (seen) users only
    new_items = list(dict.fromkeys(frame["item"]))
    if not new_items:
        raise ValueError("new_item_interactions: no interaction with a trained (seen) user.")
    first_id = int(item_map["item_id"].max()) + 1
    new_ids = np.arange(first_id, first_id + len(new_items), dtype=np.int64)
    item_users = [frame.loc[frame["item"] == item, "user_id"].to_numpy() for item in new_items]
    index, _, tokens = add_new_items(item_index, item_users, new_ids, cf_embeddings, item_tokenizer,
                                     item_tokenizer.token_prefix)
    codes = token_strings_to_codes(tokens, item_tokenizer.token_prefix, item_tokenizer.n_codebooks)
    new_tokens = pd.DataFrame(codes, columns=[c for c in item_tokens.columns if c.startswith("token_")])
    new_tokens.insert(0, "id", new_ids)
    new_tokens["tokens"] = tokens
    new_map = pd.DataFrame({"item_id": new_ids, "original_item": new_items, "train_count": 0})
    logger.info("Added %d new item(s) to the index: %s", len(new_items), dict(zip(new_items, tokens, strict=True)))
    return (
        index,
        pd.concat([item_map, new_map], ignore_index=True),
        pd.concat([item_tokens, new_tokens], ignore_index=True),
    )
