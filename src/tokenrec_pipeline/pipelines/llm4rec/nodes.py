"""Nodes of the llm4rec stage (model code in ``tokenrec_pipeline.models.llm4rec``; the training job, in-process
or DDP under torchrun, in ``tokenrec_pipeline.training.distributed``).

Two recipes train here: the project's default (``llm4rec``) and the paper's (``llm4rec`` with the
``llm4rec_paper`` overrides), reported side by side as ``tokenrec`` and ``tokenrec (paper)``.
"""

from __future__ import annotations

import copy
import logging
import math

import mlflow
import pandas as pd

from tokenrec_pipeline.core.baselines import baseline_enabled
from tokenrec_pipeline.data.prompts import sample_prompt_users
from tokenrec_pipeline.io.datasets import SkippedModel
from tokenrec_pipeline.models.llm4rec import LLM4Rec, LLM4RecConfig, TrainConfig
from tokenrec_pipeline.models.tokenizers import FittedTokenizer
from tokenrec_pipeline.models.tokenrec import id_token_vocabularies
from tokenrec_pipeline.reporting.tables import history_to_mlflow
from tokenrec_pipeline.training.distributed import (
    CURVES_PREFIX,
    DistributedSettings,
    LLM4RecJob,
    fit_llm4rec,
    train_distributed,
)

logger = logging.getLogger(__name__)

RECIPES = ("default", "paper")
TRAIN_USER_TOKENS = ("prefix_fold_in", "full_graph")
PAPER_CURVES_PREFIX = "train.llm4rec_paper"


def resolve_recipe(llm4rec: dict, paper_overrides: dict, recipe: str | None = None) -> dict:
    """The ``llm4rec`` parameters of one recipe: ``default`` as written, ``paper`` with the ``llm4rec_paper``
    block's ``model`` / ``training`` keys replacing the default's (``recipe=None``: ``llm4rec.recipe``)."""
    name = recipe or llm4rec["recipe"]
    if name not in RECIPES:
        raise ValueError(f"llm4rec.recipe must be one of {list(RECIPES)}, got {name!r}.")
    resolved = copy.deepcopy({key: value for key, value in llm4rec.items() if key != "recipe"})
    if name == "paper":
        unknown = sorted(set(paper_overrides) - {"model", "training"})
        if unknown:
            raise ValueError(f"llm4rec_paper may only hold 'model' and 'training' blocks, got {unknown}.")
        for block in ("model", "training"):
            resolved[block] = {**resolved[block], **(paper_overrides.get(block) or {})}
    return resolved


def select_training_prompts(train_prompts: pd.DataFrame, fold_in_train_prompts: pd.DataFrame,
                      training: dict) -> tuple[pd.DataFrame, dict]:
    """The train table ``llm4rec.training.train_user_tokens`` names, and the training parameters without the
    two keys this stage resolves itself: ``train_user_tokens`` and ``samples_per_user`` (prompts per epoch =
    ``samples_per_user`` x users with a training prompt, so the budget grows with the data; it replaces
    ``samples_per_epoch`` when set)."""
    training = dict(training)
    source = training.pop("train_user_tokens")
    if source not in TRAIN_USER_TOKENS:
        raise ValueError(
            f"llm4rec.training.train_user_tokens must be one of {list(TRAIN_USER_TOKENS)}, got {source!r}.")
    prompts = fold_in_train_prompts if source == "prefix_fold_in" else train_prompts
    per_user = training.pop("samples_per_user")
    if per_user is not None:
        if not isinstance(per_user, (int, float)) or per_user <= 0:
            raise ValueError(f"llm4rec.training.samples_per_user must be a positive number or null, got {per_user!r}.")
        training["samples_per_epoch"] = max(1, math.ceil(float(per_user) * prompts["user_id"].nunique()))
    return prompts, training


def train_recipe(train_prompts: pd.DataFrame, fold_in_train_prompts: pd.DataFrame, valid_prompts: pd.DataFrame,
                 cf_embeddings: dict, user_tokenizer: FittedTokenizer, item_tokenizer: FittedTokenizer,
                 llm4rec: dict, seed: int, curves_prefix: str,
                 name: str) -> tuple[LLM4Rec, pd.DataFrame, dict]:
    """Train one resolved ``llm4rec`` block (:func:`resolve_recipe`), in-process or as a DDP job; returns the
    model, its per-epoch history and the MLflow curves under ``curves_prefix`` (``name`` labels the log line).
    The two nodes below are this with the default and the paper's recipe (the ablation benchmark calls it too)."""
    item_vectors = cf_embeddings["item_embeddings"]
    vocab = id_token_vocabularies(user_tokenizer, item_tokenizer, user_tokenizer.token_prefix,
                                  item_tokenizer.token_prefix)
    prompts, training = select_training_prompts(train_prompts, fold_in_train_prompts, llm4rec["training"])
    # Early stopping on a fixed, seeded subset of the validation users (the test always scores everyone).
    max_users = llm4rec["validation"]["max_users"]
    valid = sample_prompt_users(valid_prompts, max_users, seed, "llm4rec.validation.max_users")
    if len(valid) < len(valid_prompts):
        logger.info("%s: validating each epoch on %d of %d validation users (llm4rec.validation.max_users).", name,
                    valid["user_id"].nunique(), valid_prompts["user_id"].nunique())
    job = LLM4RecJob(
        train_prompts=prompts, valid_prompts=valid, item_vectors=item_vectors,
        user_tokens=vocab["user_tokens"], item_tokens=vocab["item_tokens"],
        user_token_vectors=vocab["user_token_vectors"], item_token_vectors=vocab["item_token_vectors"],
        model_config=LLM4RecConfig.from_dict({**llm4rec["model"], "cf_dim": int(item_vectors.shape[1]), "seed": seed}),
        train_config=TrainConfig.from_dict({**training, "seed": seed}),
        device=llm4rec["device"],
        user_tokenizer=user_tokenizer,
    )
    settings = DistributedSettings.from_dict(llm4rec["distributed"])
    if settings.enabled:
        run = mlflow.active_run()
        run_id = run.info.run_id if run is not None else None
        model, history = train_distributed(job, settings, run_id, mlflow.get_tracking_uri() if run_id else None,
                                           curves_prefix)
        curves = {} if run_id else history_to_mlflow(history, curves_prefix)
    else:
        model, result = fit_llm4rec(job)
        history = pd.DataFrame(result.history)
        curves = history_to_mlflow(history, curves_prefix)
    monitor = job.train_config.monitor
    best = history.loc[history[monitor].idxmax() if job.train_config.monitor_mode == "max"
                       else history[monitor].idxmin()]
    logger.info("%s: best epoch %d of %d (%s=%.4f), %.0fs", name, best["epoch"], int(history["epoch"].max()), monitor,
                best[monitor], history["seconds"].sum())
    return model, history, curves


def train_llm4rec_model(
    train_prompts: pd.DataFrame,
    fold_in_train_prompts: pd.DataFrame,
    valid_prompts: pd.DataFrame,
    cf_embeddings: dict,
    user_tokenizer: FittedTokenizer,
    item_tokenizer: FittedTokenizer,
    llm4rec: dict,
    llm4rec_paper: dict,
    seed: int,
) -> tuple[LLM4Rec, pd.DataFrame, dict]:
    """Fine-tune the language model (recipe ``llm4rec.recipe``); select the epoch by validation NDCG@20.

    The backbone gets the K*L user and K*L item tokens (embeddings initialised from the codewords), a
    projection head maps its pooled state to the CF space (plus the decoded user codes with the
    ``residual_user`` head), and the loss pulls z towards the target item and away from negatives in the
    model's item space (cosine or MIPS). The train prompts' user tokens are the user's own
    (``full_graph``) or folded in from each prompt's prefix (``prefix_fold_in``).

    With ``llm4rec.distributed.enabled`` the same training runs as a DDP job under ``torchrun`` (a
    subprocess; its inputs go through a job folder, rank 0's checkpoint comes back from it); its rank 0
    logs the epoch curves live into this run, so the returned curves are then empty.

    Returns:
        (llm4rec_model, llm4rec_training_history, llm4rec_training_curves)
    """
    return train_recipe(train_prompts, fold_in_train_prompts, valid_prompts, cf_embeddings, user_tokenizer,
                  item_tokenizer, resolve_recipe(llm4rec, llm4rec_paper), seed, CURVES_PREFIX, "LLM4Rec")


def train_paper_llm4rec_model(
    train_prompts: pd.DataFrame,
    fold_in_train_prompts: pd.DataFrame,
    valid_prompts: pd.DataFrame,
    cf_embeddings: dict,
    user_tokenizer: FittedTokenizer,
    item_tokenizer: FittedTokenizer,
    llm4rec: dict,
    llm4rec_paper: dict,
    enabled: list[str] | str,
    seed: int,
) -> tuple[LLM4Rec | SkippedModel, pd.DataFrame, dict]:
    """The paper's recipe (``llm4rec`` + ``llm4rec_paper`` overrides), trained beside the default for the
    ``tokenrec (paper)`` row; a ``SkippedModel`` when ``tokenrec_paper`` is not in ``baselines.enabled``."""
    if not baseline_enabled("tokenrec_paper", enabled):
        logger.info("tokenrec_paper is off (not in baselines.enabled): the paper's recipe is not trained.")
        return SkippedModel(), pd.DataFrame(columns=["epoch"]), {}
    return train_recipe(train_prompts, fold_in_train_prompts, valid_prompts, cf_embeddings, user_tokenizer,
                  item_tokenizer, resolve_recipe(llm4rec, llm4rec_paper, "paper"), seed,
                  PAPER_CURVES_PREFIX, "LLM4Rec (paper recipe)")
