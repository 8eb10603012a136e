"""Collaborative embeddings (LightGCN, BPR-MF) and the popularity baseline.

* LightGCN is ``torch_geometric.nn.models.LightGCN`` propagated over the TRAIN graph only: a
  bipartite graph whose nodes are the seen users ``0..n_seen_users-1`` followed by the items
  (item ``i`` is node ``n_seen_users + i``). Unseen users are never nodes; they are folded in.
* MF is a plain embedding table scored by dot product ("w/o high-order knowledge" ablation),
  trained by the same loop and the same BPR loss.
* Both train with BPR on uniformly sampled negatives that are never a training positive of the
  user, select the epoch by validation NDCG@20 (seen users, history = train items, target = valid
  item) with early stopping, and return the best epoch's propagated embeddings.
* Pop ranks by the number of TRAIN interactions per item.

Every metric goes through :mod:`tokenrec_pipeline.evaluation.ranking`.

Modules: :mod:`.config` (``CFConfig``, ``CFResult``, device choice), :mod:`.data` (train pairs,
negative sampling), :mod:`.models` (train graph, ``SparseLightGCN``, ``MatrixFactorization``),
:mod:`.training` (BPR loop with validation and early stopping), :mod:`.fold_in` (new users /
items from their histories) and :mod:`.protocol` (protocol evaluation of CF and Pop).
"""

from tokenrec_pipeline.core.params import resolve_device

# ``benchmarks.cf_speed`` calls ``evaluate_inputs`` through this module (it did through cf.py).
from tokenrec_pipeline.evaluation.ranking import evaluate_inputs
from tokenrec_pipeline.models.cf.config import SELECTION_METRIC, CFConfig, CFResult, ModelName
from tokenrec_pipeline.models.cf.data import (
    TrainInteractions,
    item_popularity,
    positive_keys,
    sample_bpr_negatives,
    train_interactions_from_splits,
)
from tokenrec_pipeline.models.cf.fold_in import (
    FoldInMethod,
    fold_in_item_embeddings,
    fold_in_scales,
    fold_in_user_embeddings,
)
from tokenrec_pipeline.models.cf.models import (
    MatrixFactorization,
    SparseLightGCN,
    build_cf_model,
    build_edge_index,
    normalized_adjacency,
    propagate_layer_sum,
)
from tokenrec_pipeline.models.cf.protocol import evaluate_cf, evaluate_pop, popularity_score_fn
from tokenrec_pipeline.models.cf.training import (
    bpr_step,
    gather_rows,
    make_optimizer,
    train_cf,
    train_cf_from_splits,
    train_lightgcn,
    train_mf,
)

__all__ = [
    "SELECTION_METRIC",
    "CFConfig",
    "CFResult",
    "FoldInMethod",
    "MatrixFactorization",
    "ModelName",
    "SparseLightGCN",
    "TrainInteractions",
    "bpr_step",
    "build_cf_model",
    "build_edge_index",
    "evaluate_cf",
    "evaluate_inputs",
    "evaluate_pop",
    "fold_in_item_embeddings",
    "fold_in_scales",
    "fold_in_user_embeddings",
    "gather_rows",
    "item_popularity",
    "make_optimizer",
    "normalized_adjacency",
    "popularity_score_fn",
    "positive_keys",
    "propagate_layer_sum",
    "resolve_device",
    "sample_bpr_negatives",
    "train_cf",
    "train_cf_from_splits",
    "train_interactions_from_splits",
    "train_lightgcn",
    "train_mf",
]
