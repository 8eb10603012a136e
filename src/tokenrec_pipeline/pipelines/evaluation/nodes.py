"""Nodes of the evaluation stage: TokenRec and its variants, beside the baselines, in one table."""

from __future__ import annotations

import logging
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tokenrec_pipeline.models.evaluation import metrics_wide  # noqa: E402
from tokenrec_pipeline.models.item_index import ItemIndex  # noqa: E402
from tokenrec_pipeline.models.llm4rec import LLM4Rec  # noqa: E402
from tokenrec_pipeline.models.tokenrec import evaluate_prompt_variants, item_vectors_from_index, time_retrieval  # noqa: E402
from tokenrec_pipeline.reporting import markdown_table, metrics_table_to_mlflow  # noqa: E402

logger = logging.getLogger(__name__)


def evaluate_tokenrec(llm4rec_model: LLM4Rec, item_index: ItemIndex, test_prompts: pd.DataFrame,
                      interactions_split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test metrics of TokenRec for seen and unseen users, for the full prompt, the Unseen Prompt
    and the User ID Only variants, scored against the vectors the item index serves."""
    n_items = int(interactions_split["item_id"].max()) + 1
    item_vectors = item_vectors_from_index(item_index, n_items)
    return evaluate_prompt_variants(llm4rec_model, test_prompts, item_vectors)


def measure_inference_latency(llm4rec_model: LLM4Rec, item_index: ItemIndex, test_prompts: pd.DataFrame,
                              cf_embeddings: dict, evaluation: dict) -> pd.DataFrame:
    """Milliseconds per user: TokenRec (prompt -> LLM -> index top-K) batched and at batch size 1,
    and the CF model's dot-product ranking over all items, on the same seen test users."""
    n = int(evaluation.get("latency_users", 128))
    rows = test_prompts[(test_prompts["variant"] == "full") & (test_prompts["user_group"] == "seen")].head(n)
    prompts, histories = list(rows["prompt"]), [list(h) for h in rows["history"]]
    k = int(evaluation.get("latency_top_k", 20))
    batched = time_retrieval(llm4rec_model, item_index, prompts, histories, k, batch_size=64)
    single_n = min(len(prompts), int(evaluation.get("latency_single_users", 16)))
    single = time_retrieval(llm4rec_model, item_index, prompts[:single_n], histories[:single_n], k, batch_size=1)

    users = torch.as_tensor(rows["user_id"].to_numpy())
    user_vectors, item_vectors = cf_embeddings["user_embeddings"][users], cf_embeddings["item_embeddings"]
    torch.topk(user_vectors @ item_vectors.T, k, dim=1)  # warm-up
    start = time.perf_counter()
    torch.topk(user_vectors @ item_vectors.T, k, dim=1)
    cf_ms = (time.perf_counter() - start) / max(len(users), 1) * 1000
    table = pd.DataFrame([
        {"model": "tokenrec", "batch_size": 64, "users": len(prompts), "ms_per_user": batched},
        {"model": "tokenrec", "batch_size": 1, "users": single_n, "ms_per_user": single},
        {"model": "cf_dot_product", "batch_size": len(users), "users": len(users), "ms_per_user": cf_ms},
    ])
    logger.info("Latency (ms/user): TokenRec batched %.2f, batch-1 %.2f; CF dot product %.4f", batched, single, cf_ms)
    return table


def _bar_chart(wide: pd.DataFrame) -> plt.Figure:
    test = wide[wide["split"] == "test"]
    groups = list(dict.fromkeys(test["user_group"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    metrics = ["HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30"]
    for ax, group in zip(axes[0], groups):
        part = test[test["user_group"] == group]
        width = 0.8 / max(len(part), 1)
        for i in range(len(part)):
            values = [part.iloc[i][m] for m in metrics]
            ax.bar(np.arange(len(metrics)) + i * width, values, width, label=part.iloc[i]["model"])
        ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics)
        ax.set_ylabel("metric value (fraction of users)")
        ax.set_title(f"Test metrics, {group} users ({int(part['n_users'].iloc[0])} users)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def report_evaluation(baseline_metrics: pd.DataFrame, tokenrec_metrics: pd.DataFrame,
                      inference_latency: pd.DataFrame) -> tuple[pd.DataFrame, str, dict, plt.Figure]:
    """The run's one results table (Pop, MF, LightGCN, TokenRec and its variants; valid + test;
    seen + unseen users) as CSV, Markdown, MLflow metrics and a bar chart."""
    long = pd.concat([baseline_metrics, tokenrec_metrics], ignore_index=True)
    wide = metrics_wide(long)
    metrics = metrics_table_to_mlflow(long)
    for row in inference_latency.itertuples():
        metrics[f"latency.{row.model}.batch_{row.batch_size}.ms_per_user"] = {"value": float(row.ms_per_user), "step": 0}
    for row in wide[wide["split"] == "test"].to_dict("records"):
        logger.info("test %-6s %-26s HR@20=%.4f NDCG@20=%.4f", row["user_group"], row["model"], row["HR@20"], row["NDCG@20"])
    return long, markdown_table(wide) + "\n" + markdown_table(inference_latency), metrics, _bar_chart(wide)
