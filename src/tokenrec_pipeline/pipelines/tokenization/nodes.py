"""Nodes of the tokenization stage (model code lives in ``tokenrec_pipeline.models.tokenizers``)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from tokenrec_pipeline.models.tokenizers import (
    FittedTokenizer,
    TokenizerConfig,
    codes_to_token_strings,
    fit_tokenizer,
    tokenizer_diagnostics,
)

logger = logging.getLogger(__name__)

SIDES = ("user", "item")


def tokenizer_inputs(cf_embeddings: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectors each tokenizer is fitted on and the vectors it tokenises.

    Users: fitted on seen (training) users only; tokenises seen users followed by the unseen
    users' folded-in vectors, so row ``r`` is ``user_id == r``. Items: fitted on and tokenising
    every item. Returns (user_fit, user_all, item_fit, item_all).
    """
    users = cf_embeddings["user_embeddings"]
    all_users = torch.cat([users, cf_embeddings["unseen_user_embeddings"]], dim=0)
    items = cf_embeddings["item_embeddings"]
    return users, all_users, items, items


def side_tokenizer_config(tokenizer: dict, side: dict, seed: int) -> TokenizerConfig:
    """One side's :class:`TokenizerConfig`: ``tokenizer`` without the side blocks, ``side["overrides"]`` over it,
    and the run's ``seed``."""
    shared = {k: v for k, v in tokenizer.items() if k not in SIDES}
    overrides = dict(side["overrides"] or {})
    return TokenizerConfig.from_dict({**shared, **overrides, "seed": seed}, param_prefix="tokenizer")


def fit_id_tokenizer(fit_vectors: torch.Tensor, tokenizer: dict, quantizer: str, side: dict,
                     seed: int) -> FittedTokenizer:
    """Fit one tokenizer: ``quantizer`` (``params:tokenizer.quantizer``, or the sweep's per-namespace value)
    with the rest of ``tokenizer`` and the per-side ``tokenizer.<side>.overrides``."""
    config = side_tokenizer_config({**tokenizer, "quantizer": quantizer}, side, seed)
    fitted = fit_tokenizer(fit_vectors, config)
    fitted.token_prefix = side["token_prefix"]  # saved with the tokenizer: later stages read it from there
    logger.info("Fitted %s tokenizer on %d vectors in %.1fs", config.quantizer, len(fit_vectors), fitted.fit_seconds)
    return fitted


def tokenize_ids(fitted: FittedTokenizer, all_vectors: torch.Tensor) -> tuple[pd.DataFrame, dict]:
    """Token table (``id``, ``token_1..K``, ``tokens`` string) and diagnostics for every id.

    New ids (unseen users) go through the same fitted model: no refit.
    """
    codes = np.asarray(fitted.encode(all_vectors))
    prefix = fitted.token_prefix
    table = pd.DataFrame(codes, columns=[f"token_{k + 1}" for k in range(codes.shape[1])])
    table.insert(0, "id", np.arange(len(codes), dtype=np.int64))
    table["tokens"] = codes_to_token_strings(codes, prefix)
    diagnostics = {k: float(v) for k, v in tokenizer_diagnostics(codes, all_vectors, fitted).items()}
    logger.info(
        "%s tokens: collision rate %.4f, %s", prefix, diagnostics.get("collision_rate", float("nan")),
        ", ".join(f"{k}={v:.3f}" for k, v in diagnostics.items() if k.startswith("utilisation")),
    )
    return table, diagnostics


def report_tokenizers(user_diagnostics: dict, item_diagnostics: dict, quantizer: str) -> tuple[pd.DataFrame, dict]:
    """One diagnostics table (side x measure, with the ``quantizer``) and MLflow metrics
    ``tokenizer.<side>.<measure>``."""
    rows = [{"side": side, "quantizer": quantizer, **diag}
            for side, diag in (("user", user_diagnostics), ("item", item_diagnostics))]
    metrics = {
        f"tokenizer.{side}.{name}": {"value": float(value), "step": 0}
        for side, diag in (("user", user_diagnostics), ("item", item_diagnostics))
        for name, value in diag.items()
    }
    return pd.DataFrame(rows), metrics
