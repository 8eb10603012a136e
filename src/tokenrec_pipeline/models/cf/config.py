"""Hyper-parameters of CF training (:class:`CFConfig`), its result (:class:`CFResult`) and the device choice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from torch import Tensor

from tokenrec_pipeline.core.params import dataclass_from_dict
from tokenrec_pipeline.evaluation.ranking import DEFAULT_KS, Histories
from tokenrec_pipeline.models.cf.fold_in import FoldInMethod, fold_in_item_embeddings, fold_in_user_embeddings

SELECTION_METRIC = "NDCG@20"
"""Validation metric that picks the epoch (docs/DESIGN.md: model selection on validation only)."""

ModelName = Literal["lightgcn", "mf"]


@dataclass
class CFConfig:
    """Hyper-parameters of CF training.

    The defaults are ``cf_pretraining.lightgcn`` of ``conf/base/parameters_cf_pretraining.yml`` (d = 64, 3 layers,
    Adam 0.005, 200 epochs), so ``CFConfig()`` is the model ``kedro run`` trains; the MF baseline's values are
    ``baselines.mf`` (``tests/test_parameter_defaults.py`` keeps the two in step).
    """

    model: ModelName = "lightgcn"
    embedding_dim: int = 64
    num_layers: int = 3
    epochs: int = 200
    batch_size: int = 2048
    lr: float = 5e-3
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    """Optimiser weight decay (decoupled for AdamW); the BPR L2 term is ``lambda_reg``."""
    lambda_reg: float = 1e-4
    """L2 on the batch's layer-0 embeddings inside ``recommendation_loss`` (per sample, as LightGCN)."""
    eval_every: int = 1
    patience: int = 10
    """Number of validations without improvement of valid NDCG@20 before stopping."""
    eval_ks: tuple[int, ...] = DEFAULT_KS
    eval_batch_size: int = 1024
    seed: int = 0
    device: str | None = "auto"
    """``"auto"`` (or ``None``): CUDA when available."""
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in ("lightgcn", "mf"):
            raise ValueError(f"cf model must be 'lightgcn' or 'mf', got {self.model!r}.")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"cf optimizer must be 'adam' or 'adamw', got {self.optimizer!r}.")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise ValueError("cf epochs, batch_size, eval_every and patience must be >= 1.")
        if 20 not in self.eval_ks:
            raise ValueError(f"eval_ks must contain 20 (early stopping uses {SELECTION_METRIC}), got {self.eval_ks}.")
        self.eval_ks = tuple(int(k) for k in self.eval_ks)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CFConfig:
        """Build from a parameters mapping (``cf_pretraining.lightgcn``, ``baselines.mf``), rejecting unknown keys."""
        return dataclass_from_dict(cls, values, "cf model")


@dataclass
class CFResult:
    """Trained collaborative embeddings and their training record.

    ``user_embeddings`` (n_seen_users, d) and ``item_embeddings`` (n_items, d) are the best
    epoch's final (for LightGCN: propagated, ``get_embedding``) vectors, on CPU. ``state_dict``
    holds the best epoch's raw parameters. ``history`` has one row per epoch: ``epoch``,
    ``loss`` and ``valid_<metric>`` (NaN on epochs without validation). ``*_fold_in_basis`` are
    what :func:`fold_in_user_embeddings` / :func:`fold_in_item_embeddings` aggregate for new
    users / items, ``*_fold_in_scales[method]`` the least-squares factor that maps the fold-in of
    the TRAIN nodes onto their trained embeddings (:meth:`fold_in_users`, :meth:`fold_in_items`).
    """

    model_name: str
    user_embeddings: Tensor
    item_embeddings: Tensor
    best_epoch: int
    history: pd.DataFrame
    best_valid_metrics: dict[str, float]
    state_dict: dict[str, Tensor]
    user_degree: np.ndarray
    item_degree: np.ndarray
    user_fold_in_basis: Tensor
    item_fold_in_basis: Tensor
    user_fold_in_scales: dict[str, float]
    item_fold_in_scales: dict[str, float]
    config: CFConfig
    epochs_run: int
    fit_seconds: float
    params: dict[str, object] = field(default_factory=dict)

    @property
    def n_seen_users(self) -> int:
        return self.user_embeddings.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_embeddings.shape[0]

    def fold_in_users(
        self, histories: Histories, method: FoldInMethod = "symmetric", calibrated: bool = True
    ) -> Tensor:
        """Vectors for users outside training from their item histories (rows follow ``histories``).

        :func:`fold_in_user_embeddings` on ``item_fold_in_basis``, times
        ``user_fold_in_scales[method]`` when ``calibrated``. That positive scale leaves every
        ranking unchanged; it stands in, on average, for the missing ego term, so new users'
        vectors have the magnitude of the trained ones the tokenizer is fitted on.
        """
        vectors = fold_in_user_embeddings(self.item_fold_in_basis, histories, self.item_degree, method)
        return vectors * self.user_fold_in_scales[method] if calibrated else vectors

    def fold_in_items(
        self, item_users: Histories, method: FoldInMethod = "symmetric", calibrated: bool = True
    ) -> Tensor:
        """Vectors for new items from the seen users who interacted with them (see :meth:`fold_in_users`)."""
        vectors = fold_in_item_embeddings(self.user_fold_in_basis, item_users, self.user_degree, method)
        return vectors * self.item_fold_in_scales[method] if calibrated else vectors
