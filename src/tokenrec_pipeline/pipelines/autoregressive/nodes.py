"""Nodes of the autoregressive baseline stage (model code in ``tokenrec_pipeline.models.autoregressive``).

The paper's efficiency and validity argument is against LLM recommenders that *generate* an item's
tokens with beam search (P5 and its successors). This stage trains that generator on exactly the
prompts TokenRec is trained on (same backbone, same ID tokens, the same item code table) and decodes
it both ways: constrained to real items (a prefix trie) and unconstrained, where the share of
generated tuples that are no item -- the hallucination the paper names -- is reported, not hidden.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tokenrec_pipeline.core.baselines import baseline_enabled
from tokenrec_pipeline.data.prompts import sample_prompt_users
from tokenrec_pipeline.evaluation.ranking import METRIC_COLUMNS, RANK_COLUMNS, metrics_to_frame, ranks_to_frame
from tokenrec_pipeline.io.datasets import SkippedModel
from tokenrec_pipeline.models.autoregressive import (
    DECODE_MODES,
    AutoregressiveConfig,
    AutoregressiveRecommender,
    AutoregressiveTrainConfig,
    CodeTrie,
    build_autoregressive,
    evaluate_generation,
    train_autoregressive,
)
from tokenrec_pipeline.models.tokenizers import FittedTokenizer
from tokenrec_pipeline.models.tokenrec import id_token_vocabularies
from tokenrec_pipeline.reporting.tables import history_to_mlflow
from tokenrec_pipeline.training.loop import valid_metrics

logger = logging.getLogger(__name__)

SHARED_MODEL_KEYS = ("backbone", "max_length", "truncation_side", "token_init_scale")
"""``llm4rec.model`` keys the autoregressive model takes from the language model's block (same backbone and
prompts)."""


def item_code_table(item_tokens: pd.DataFrame) -> np.ndarray:
    """(I, K) item codes, row = item id, from the tokenization stage's token table."""
    columns = sorted((c for c in item_tokens.columns if c.startswith("token_")), key=lambda c: int(c.split("_")[1]))
    if not columns:
        raise ValueError("item.tokens has no token_<k> columns; run the tokenization stage first.")
    ordered = item_tokens.sort_values("id")
    if not np.array_equal(ordered["id"].to_numpy(), np.arange(len(ordered))):
        raise ValueError("item.tokens ids are not 0..I-1; the code table must cover every item id once.")
    return ordered[columns].to_numpy(dtype=np.int64)


def _full_prompts(prompts: pd.DataFrame, what: str) -> pd.DataFrame:
    rows = prompts[prompts["variant"] == "full"] if "variant" in prompts else prompts
    if rows.empty:
        raise ValueError(f"{what} has no 'full' prompts to evaluate the autoregressive baseline on.")
    return rows


def _decode_rows(rows: pd.DataFrame) -> tuple[list[str], np.ndarray, list[list[int]], np.ndarray]:
    return (list(rows["prompt"]), rows["user_id"].to_numpy(), [list(map(int, h)) for h in rows["history"]],
            rows["target_item"].to_numpy())


def train_autoregressive_model(
    train_prompts: pd.DataFrame,
    valid_prompts: pd.DataFrame,
    item_tokens: pd.DataFrame,
    user_tokenizer: FittedTokenizer,
    item_tokenizer: FittedTokenizer,
    llm4rec: dict,
    autoregressive: dict,
    enabled: list[str] | str,
    seed: int,
) -> tuple[AutoregressiveRecommender | SkippedModel, pd.DataFrame, dict]:
    """Teacher-forced training of the item-token generator; epoch chosen by validation NDCG@20 of
    constrained beam search on a sample of validation prompts.

    The backbone, prompt truncation and the ID-token initialisation follow ``llm4rec.model`` so the only
    difference from TokenRec is the output side: K generated tokens instead of one projected vector.

    Returns:
        (autoregressive_model, autoregressive_training_history, autoregressive_training_curves); the
        model is a ``SkippedModel`` (saved as an explicit marker) when ``autoregressive`` is not in
        ``baselines.enabled``.
    """
    if not baseline_enabled("autoregressive", enabled):
        logger.info("Autoregressive baseline switched off (not in baselines.enabled).")
        return SkippedModel(), pd.DataFrame(), {}
    codes = item_code_table(item_tokens)
    vocab = id_token_vocabularies(user_tokenizer, item_tokenizer, user_tokenizer.token_prefix,
                                  item_tokenizer.token_prefix)
    shared = {key: llm4rec["model"][key] for key in SHARED_MODEL_KEYS}
    config = AutoregressiveConfig.from_dict({
        **shared, **autoregressive["model"], "n_codebooks": item_tokenizer.n_codebooks,
        "codebook_size": item_tokenizer.codebook_size, "item_token_prefix": item_tokenizer.token_prefix,
        "seed": seed,
    })
    model = build_autoregressive(config, vocab["user_tokens"], vocab["user_token_vectors"],
                                 vocab["item_token_vectors"], device=autoregressive["device"])
    trie = CodeTrie(codes, config.codebook_size)
    beam = int(autoregressive["beam_size"])
    valid = sample_prompt_users(_full_prompts(valid_prompts, "valid_prompts"),
                                autoregressive["validation"]["max_users"], seed,
                                "autoregressive.validation.max_users")
    v_prompts, v_users, v_histories, v_targets = _decode_rows(valid)

    def validate(current: AutoregressiveRecommender) -> dict[str, float]:
        result, _ = evaluate_generation(current, v_prompts, v_users, v_histories, v_targets, trie, beam_size=beam,
                                        mode="constrained")
        return valid_metrics(result.metrics)

    train_config = AutoregressiveTrainConfig.from_dict({**autoregressive["training"], "seed": seed})
    result = train_autoregressive(model, list(train_prompts["prompt"]), train_prompts["target_item"].to_numpy(),
                                  codes, train_config, validate_fn=validate)
    history = pd.DataFrame(result.history)
    logger.info("Autoregressive baseline: best epoch %d (%s=%.4f), %.0fs", result.best_epoch, result.monitor,
                result.best_score, result.seconds)
    return model, history, history_to_mlflow(history, "train.autoregressive")


def evaluate_autoregressive_model(
    autoregressive_model: AutoregressiveRecommender | SkippedModel,
    test_prompts: pd.DataFrame,
    item_tokens: pd.DataFrame,
    autoregressive: dict,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Test HR/NDCG@K of beam search, constrained to real items and unconstrained, for seen and unseen
    users (the same ``full`` test prompts TokenRec is scored on), plus how many generated tuples are no
    item at all.

    Returns:
        (autoregressive.metrics, autoregressive.ranks, autoregressive_generation_summary); rows are
        named ``autoregressive (constrained)`` and ``autoregressive (unconstrained)``.
    """
    if isinstance(autoregressive_model, SkippedModel):
        return (pd.DataFrame(columns=list(METRIC_COLUMNS)), pd.DataFrame(columns=list(RANK_COLUMNS)),
                pd.DataFrame(columns=["model", "user_group", "prompts", "generated", "invalid", "invalid_rate"]))
    codes = item_code_table(item_tokens)
    trie = CodeTrie(codes, autoregressive_model.codebook_size)
    beam = int(autoregressive["beam_size"])
    modes = autoregressive["decode_modes"]
    unknown = sorted(set(modes) - set(DECODE_MODES))
    if unknown:
        raise ValueError(f"autoregressive.decode_modes: unknown mode(s) {unknown}; use {list(DECODE_MODES)}.")
    frames, ranks, summaries = [], [], []
    for group, rows in _full_prompts(test_prompts, "test_prompts").groupby("user_group", sort=False):
        prompts, users, histories, targets = _decode_rows(rows)
        for mode in modes:
            name = f"autoregressive ({mode})"
            result, output = evaluate_generation(autoregressive_model, prompts, users, histories, targets, trie,
                                                 beam_size=beam, mode=mode, show_progress=True)
            frames.append(metrics_to_frame({group: result}, model=name, split="test"))
            ranks.append(ranks_to_frame({group: result}, model=name, split="test"))
            summaries.append({"model": name, "user_group": group, "beam_size": beam, **output.summary()})
            logger.info("%s, %s users: HR@20=%.4f, %d of %d generated tuples are no item (%.1f%%), %.1f ms/user",
                        name, group, result.metrics.get("HR@20", float("nan")), output.n_invalid, output.n_generated,
                        100 * output.invalid_rate, 1000 * output.seconds / max(len(prompts), 1))
    metrics = pd.concat(frames, ignore_index=True)
    metrics = metrics[metrics["metric"] != "invalid_rate"]  # reported in the generation summary instead
    return metrics, pd.concat(ranks, ignore_index=True), pd.DataFrame(summaries)
