"""Recommendations for known users and brand-new users (raw histories), and new items, from the
trained artefacts — no model is retrained.

* Known user: their K tokens from the token table; their whole history (all splits) is excluded.
* New user: item ids of their history -> a CF vector by fold-in (trained item bases, the same
  calibrated formula the evaluation uses) -> K tokens from the fitted user tokenizer -> prompt.
* New item: a CF vector by fold-in from the (known) users who interacted with it -> added to the
  faiss index (and given K tokens by the fitted item tokenizer), recommendable at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tokenrec_pipeline.core.artefacts import recorded_fold_in_method
from tokenrec_pipeline.data.prompts import PromptConfig, render_prompt
from tokenrec_pipeline.evaluation.item_index import ItemIndex, add_items
from tokenrec_pipeline.models.cf import fold_in_item_embeddings, fold_in_user_embeddings
from tokenrec_pipeline.models.item_space import items_for_index
from tokenrec_pipeline.models.tokenizers import FittedTokenizer, codes_to_token_strings

logger = logging.getLogger(__name__)


ON_UNKNOWN_ITEM = ("error", "skip")
"""Values of ``recommend.on_unknown_item``: fail on an unknown item id, or drop it with a warning."""


class UnknownIdError(ValueError):
    """A request names ids the trained artefacts do not know."""


@dataclass(frozen=True)
class Request:
    """One recommendation request: a known user (original id) or a raw history (original item ids)."""

    request_id: str
    user: str | None
    history: tuple[str, ...]


def parse_requests(recommend: dict) -> list[Request]:
    """``recommend.users`` (original user ids) and ``recommend.histories`` (lists of original item
    ids) -> requests. On the command line, where commas separate parameters, use strings:
    ``recommend.users="1 2"`` and ``recommend.histories="5 17 33;8 9"`` (``;`` between users)."""
    users = recommend.get("users") or []
    users = str(users).split() if isinstance(users, (str, int)) else users
    histories = recommend.get("histories") or []
    histories = [h for h in histories.split(";") if h.strip()] if isinstance(histories, str) else histories
    requests = [Request(f"user:{u}", str(u), ()) for u in users]
    for i, history in enumerate(histories):
        items = history.split() if isinstance(history, str) else [str(x) for x in history]
        requests.append(Request(f"history:{i}", None, tuple(items)))
    if not requests:
        raise ValueError("Nothing to recommend: set recommend.users and/or recommend.histories.")
    return requests


REQUEST_COLUMNS = ("request_id", "user", "history")


def requests_to_frame(requests: list[Request]) -> pd.DataFrame:
    """Requests -> the request table the recommend pipeline and the MLflow model read (strings, ``None``
    for an absent user / history, history items separated by spaces)."""
    return pd.DataFrame({"request_id": [r.request_id for r in requests], "user": [r.user for r in requests],
                         "history": [" ".join(r.history) or None for r in requests]}, columns=list(REQUEST_COLUMNS))


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(str(v) for v in value)
    return str(value).strip()


def requests_from_frame(requests: pd.DataFrame) -> list[Request]:
    """Rows of a request table -> requests.

    Each row names a known ``user`` (original id) or gives a ``history`` (original item ids, as a
    space-separated string or a list) for a brand-new user; ``request_id`` is optional (default
    ``user:<id>`` / ``history:<row>``). This is the input of the packaged MLflow model, e.g.
    ``{"dataframe_records": [{"user": "42"}, {"history": "5 17 33"}]}``.
    """
    if not isinstance(requests, pd.DataFrame):
        raise TypeError(f"recommendation_requests must be a table (pandas DataFrame), got {type(requests).__name__}.")
    if not {"user", "history"} & set(requests.columns):
        raise ValueError(
            f"recommendation_requests: needs a 'user' and/or a 'history' column, got {list(requests.columns)}."
        )
    parsed = []
    for row, record in enumerate(requests.to_dict("records")):
        user, history = _cell(record.get("user")), _cell(record.get("history"))
        if bool(user) == bool(history):
            raise ValueError(f"recommendation_requests row {row}: give exactly one of 'user' or 'history' "
                             f"(got user={user!r}, history={history!r}).")
        default_id = f"user:{user}" if user else f"history:{row}"
        request_id = _cell(record.get("request_id")) or default_id
        parsed.append(Request(request_id, user or None, tuple(history.split())))
    if not parsed:
        raise ValueError("recommendation_requests is empty: nothing to recommend.")
    return parsed


def map_history(items: tuple[str, ...], item_ids: pd.Series, on_unknown: str, request_id: str) -> list[int]:
    """Original item ids -> contiguous ids; unknown ones raise (``error``) or are dropped (``skip``).

    A repeated item counts once, at its first position, as preprocessing counts interactions (implicit
    feedback): otherwise 1,000 copies of one item would fold in to a user vector sqrt(1000) times too long."""
    known = [item_ids[i] for i in items if i in item_ids.index]
    unknown = [i for i in items if i not in item_ids.index]
    if unknown:
        message = f"{request_id}: unknown item id(s) {unknown[:10]} (not in the trained catalogue)"
        if on_unknown == "error":
            raise UnknownIdError(message + "; set recommend.on_unknown_item=skip to drop them.")
        logger.warning("%s; skipped.", message)
    if not known:
        raise UnknownIdError(f"{request_id}: no known item in the history; cannot place this user.")
    return list(dict.fromkeys(int(i) for i in known))


def _fold_in_method(cf_embeddings: dict, method: str | None) -> str:
    recorded = recorded_fold_in_method(cf_embeddings)
    if method is not None and method != recorded:
        raise ValueError(f"cf_embeddings was fitted for the fold-in rule {recorded!r} (its scale is for that rule), "
                         f"not {method!r}: rerun cf_pretraining with cf_pretraining.fold_in={method}.")
    return recorded


def new_user_vectors(histories: list[list[int]], cf_embeddings: dict, method: str | None = None) -> torch.Tensor:
    """CF vectors of brand-new users from their item histories, folded in exactly as the evaluation folds in
    unseen users: the rule ``cf_embeddings`` records, times the scale fitted for it. ``method``: ``None`` (the
    recorded rule) or the rule the caller expects (an error if it is not the recorded one)."""
    vectors = fold_in_user_embeddings(cf_embeddings["item_fold_in_basis"], histories, cf_embeddings["item_degree"],
                                      _fold_in_method(cf_embeddings, method))
    return vectors * cf_embeddings["user_fold_in_scale"]


def new_user_tokens(histories: list[list[int]], cf_embeddings: dict, user_tokenizer: FittedTokenizer,
                    user_prefix: str, method: str | None = None) -> list[str]:
    """Token strings of brand-new users from their item histories (:func:`new_user_vectors` + fitted tokenizer).

    Items added after training (``add_items``) have no fold-in basis; they still appear in the
    prompt and are excluded from the results, but the user's vector comes from the trained items.
    """
    n_trained = cf_embeddings["item_fold_in_basis"].shape[0]
    trained = [[i for i in h if i < n_trained] for h in histories]
    if any(not h for h in trained):
        raise UnknownIdError("A new user's history holds only items added after training; add a trained item.")
    vectors = new_user_vectors(trained, cf_embeddings, method)
    return codes_to_token_strings(np.asarray(user_tokenizer.encode(vectors)), user_prefix)


def build_request_prompts(requests: list[Request], interactions_split: pd.DataFrame, user_map: pd.DataFrame,
                          item_map: pd.DataFrame, user_tokens: pd.DataFrame, item_tokens: pd.DataFrame,
                          cf_embeddings: dict, user_tokenizer: FittedTokenizer, prompt_config: PromptConfig,
                          user_prefix: str, on_unknown: str = "error") -> pd.DataFrame:
    """One prompt per request, with the item ids to exclude (the history)."""
    user_ids = pd.Series(user_map["user_id"].to_numpy(), index=user_map["original_user"].astype(str))
    item_ids = pd.Series(item_map["item_id"].to_numpy(), index=item_map["original_item"].astype(str))
    token_of_user = user_tokens.set_index("id")["tokens"]
    token_of_item = item_tokens.set_index("id")["tokens"].to_numpy()
    template = prompt_config.train_templates[prompt_config.test_template_id]
    # Only the requested users' rows are grouped (a request must not cost a pass over every user's history).
    known = [int(user_ids[r.user]) for r in requests if r.user is not None and r.user in user_ids.index]
    rows_of_known = interactions_split[interactions_split["user_id"].isin(known)]
    histories_of = rows_of_known.groupby("user_id", sort=False)["item_id"].agg(list)

    rows, new_rows = [], []
    for request in requests:
        if request.user is not None:
            if request.user not in user_ids.index:
                raise UnknownIdError(f"{request.request_id}: unknown user id {request.user!r}; pass their history "
                                     "in recommend.histories instead.")
            uid = int(user_ids[request.user])
            rows.append([request.request_id, request.user, token_of_user[uid], list(histories_of[uid])])
        else:
            history = map_history(request.history, item_ids, on_unknown, request.request_id)
            new_rows.append(len(rows))
            rows.append([request.request_id, None, None, history])
    if new_rows:
        tokens = new_user_tokens([rows[i][3] for i in new_rows], cf_embeddings, user_tokenizer, user_prefix)
        for i, token_string in zip(new_rows, tokens, strict=True):
            rows[i][2] = token_string
    prompts = [render_prompt(template, tokens, [token_of_item[j] for j in history], prompt_config)
               for _, _, tokens, history in rows]
    return pd.DataFrame({"request_id": [r[0] for r in rows], "user": [r[1] for r in rows],
                         "user_tokens": [r[2] for r in rows], "history": [r[3] for r in rows], "prompt": prompts})


def add_new_items(index: ItemIndex, item_users: list[list[int]], new_item_ids: np.ndarray, cf_embeddings: dict,
                  item_tokenizer: FittedTokenizer, item_prefix: str) -> tuple[ItemIndex, torch.Tensor, list[str]]:
    """Fold in new items from their (known) users, add them to the index, and tokenise them."""
    vectors = fold_in_item_embeddings(cf_embeddings["user_fold_in_basis"], item_users, cf_embeddings["user_degree"],
                                      recorded_fold_in_method(cf_embeddings))
    vectors = vectors * cf_embeddings["item_fold_in_scale"]
    # Into the index's space (cosine, or MIPS with the training catalogue's largest norm).
    placed = items_for_index(vectors, index.dim, cf_embeddings["item_embeddings"])
    index = add_items(index, placed.numpy(), new_item_ids)
    tokens = codes_to_token_strings(np.asarray(item_tokenizer.encode(vectors)), item_prefix)
    return index, vectors, tokens
