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

from tokenrec_pipeline.core.baselines import skipped_baseline_tables, switched_off_models  # noqa: E402
from tokenrec_pipeline.evaluation.item_index import ItemIndex  # noqa: E402
from tokenrec_pipeline.evaluation.ranking import metrics_wide  # noqa: E402
from tokenrec_pipeline.evaluation.significance import SIGNIFICANCE_COLUMNS, significance_table  # noqa: E402
from tokenrec_pipeline.io.datasets import SkippedModel  # noqa: E402
from tokenrec_pipeline.models.llm4rec import LLM4Rec  # noqa: E402
from tokenrec_pipeline.models.tokenrec import evaluate_prompt_variants, item_vectors_from_index, time_retrieval  # noqa: E402
from tokenrec_pipeline.reporting.paper_reference import paper_beside, paper_rows  # noqa: E402
from tokenrec_pipeline.reporting.run_summary import headline_table, headline_to_mlflow  # noqa: E402
from tokenrec_pipeline.reporting.tables import markdown_table, metric_key, metrics_table_to_mlflow  # noqa: E402

logger = logging.getLogger(__name__)


def evaluate_tokenrec(llm4rec_model: LLM4Rec, item_index: ItemIndex, test_prompts: pd.DataFrame,
                      interactions_split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test metrics of TokenRec for seen and unseen users, for the full prompt, the Unseen Prompt
    and the User ID Only variants, scored against the vectors the item index serves."""
    n_items = int(interactions_split["item_id"].max()) + 1
    item_vectors = item_vectors_from_index(item_index, n_items)
    if item_vectors.shape[1] != llm4rec_model.space_dim:
        raise ValueError(f"item_index holds {item_vectors.shape[1]}-dimensional vectors but the language model "
                         f"scores in a {llm4rec_model.space_dim}-dimensional {llm4rec_model.config.item_space!r} "
                         "space: they come from different runs; rerun `kedro run --pipeline=full` (or from the "
                         "indexing stage).")
    return evaluate_prompt_variants(llm4rec_model, test_prompts, item_vectors)


def evaluate_paper_tokenrec(paper_llm4rec_model: LLM4Rec | SkippedModel, test_prompts: pd.DataFrame,
                            cf_embeddings: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test metrics of the paper's recipe (row ``tokenrec (paper)``), full prompt, seen and unseen users,
    scored exactly (no index) against every item in that model's own item space; empty tables when it was
    switched off."""
    if isinstance(paper_llm4rec_model, SkippedModel):
        return skipped_baseline_tables()
    full = test_prompts[test_prompts["variant"] == "full"]
    item_vectors = paper_llm4rec_model.items_in_space(cf_embeddings["item_embeddings"])
    return evaluate_prompt_variants(paper_llm4rec_model, full, item_vectors, model_name="tokenrec (paper)")


def measure_inference_latency(llm4rec_model: LLM4Rec, item_index: ItemIndex, test_prompts: pd.DataFrame,
                              cf_embeddings: dict, evaluation: dict) -> pd.DataFrame:
    """Milliseconds per user: TokenRec (prompt -> LLM -> index top-K) batched and at batch size 1,
    and the CF model's dot-product ranking over all items, on the same seen test users."""
    n = int(evaluation["latency_users"])
    rows = test_prompts[(test_prompts["variant"] == "full") & (test_prompts["user_group"] == "seen")].head(n)
    prompts, histories = list(rows["prompt"]), [list(h) for h in rows["history"]]
    k = int(evaluation["latency_top_k"])
    batched = time_retrieval(llm4rec_model, item_index, prompts, histories, k, batch_size=64)
    single_n = min(len(prompts), int(evaluation["latency_single_users"]))
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
    for ax, group in zip(axes[0], groups, strict=True):
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


def compare_with_reference(evaluation: dict, seed: int, enabled: list[str] | str,
                           *ranks_tables: pd.DataFrame) -> pd.DataFrame:
    """Bootstrap intervals of every compared model's HR@20 / NDCG@20 and paired tests of its
    per-user NDCG@20 against the reference model (TokenRec) on the users both were evaluated on.

    ``ranks_tables``: the per-user ranks of every compared model (any number). Baselines switched off in
    ``baselines.enabled`` are left out, like their metric rows -- also the CF model that was trained only
    because the tokenizers need it (its ranks table is not empty). Settings: ``evaluation.significance``.
    """
    config = evaluation["significance"]
    switched_off = switched_off_models(enabled)
    tables = [table[~table["model"].isin(switched_off)] for table in ranks_tables]
    tables = [table for table in tables if len(table)]
    if not tables:
        return pd.DataFrame(columns=list(SIGNIFICANCE_COLUMNS))
    table = significance_table(
        pd.concat(tables, ignore_index=True),
        reference=config["reference_model"],
        test_metric=config["test_metric"],
        interval_metrics=config["interval_metrics"],
        n_resamples=int(config["n_resamples"]),
        confidence=float(config["confidence"]),
        seed=seed,
        splits=config["splits"],
    )
    for row in table.dropna(subset=["p_wilcoxon"]).itertuples():
        logger.info("%s %-6s %-26s %s %+.4f vs %s: Wilcoxon p=%.3g, paired t p=%.3g (%d users)", row.split,
                    row.user_group, row.model, row.metric, row.mean_diff, row.reference, row.p_wilcoxon,
                    row.p_ttest, row.n_paired)
    return table


def significance_to_mlflow(significance: pd.DataFrame) -> dict:
    """``<split>.<group>.<model>.<metric>.{ci_low,ci_high,p_wilcoxon,p_ttest,mean_diff}`` metrics (NaN left out),
    sorted by name right after the metric they qualify (``test.seen.lightgcn.NDCG_at_20``)."""
    metrics = {}
    for row in significance.to_dict("records"):
        for column in ("ci_low", "ci_high", "p_wilcoxon", "p_ttest", "mean_diff"):
            if pd.notna(row[column]):
                name = f"{metric_key(row['split'], row['user_group'], row['model'], row['metric'])}.{column}"
                metrics[name] = {"value": float(row[column]), "step": 0}
    return metrics


def _with_significance(wide: pd.DataFrame, significance: pd.DataFrame) -> pd.DataFrame:
    """Interval and p-value columns (formatted for reading) next to each (model, split, user_group) row."""
    if significance.empty:
        return wide
    keys = ["model", "split", "user_group"]
    columns = {}
    for metric, part in significance.groupby("metric", sort=False):
        part = part.set_index(keys)
        columns[f"{metric} CI"] = part.apply(lambda r: f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]", axis=1)
        tested = part.dropna(subset=["p_wilcoxon"])
        if len(tested):
            reference = tested["reference"].iloc[0]
            columns[f"Δ{metric} vs {reference}"] = tested["mean_diff"].map(lambda v: f"{v:+.4f}")
            columns["p Wilcoxon"] = tested["p_wilcoxon"].map(lambda v: f"{v:.2g}")
            columns["p t-test"] = tested["p_ttest"].map(lambda v: f"{v:.2g}")
    extra = pd.DataFrame(columns).reset_index()
    return wide.merge(extra, on=keys, how="left").fillna({c: "" for c in columns})


def report_evaluation(inference_latency: pd.DataFrame, evaluation_significance: pd.DataFrame,
                      paper_reference: dict, dataset: str, *metric_tables: pd.DataFrame,
                      ) -> tuple[pd.DataFrame, str, dict, plt.Figure]:
    """The run's one results table (Pop, MF, LightGCN, TokenRec and its variants, any other compared
    model; valid + test; seen + unseen users) as CSV, Markdown, MLflow metrics and a bar chart.

    The Markdown table carries each model's bootstrap intervals and paired tests against TokenRec
    (``evaluation_significance``) and, for datasets in the paper, the paper's reported values in
    ``paper ...`` columns with a line saying why they are not directly comparable.
    """
    long = pd.concat([table for table in metric_tables if len(table)], ignore_index=True)
    wide = metrics_wide(long)
    metrics = {**metrics_table_to_mlflow(long), **significance_to_mlflow(evaluation_significance)}
    for row in inference_latency.itertuples():
        metrics[f"latency.{row.model}.batch_{row.batch_size}.ms_per_user"] = {"value": float(row.ms_per_user),
                                                                              "step": 0}
    for row in wide[wide["split"] == "test"].to_dict("records"):
        logger.info("test %-6s %-26s HR@20=%.4f NDCG@20=%.4f", row["user_group"], row["model"], row["HR@20"],
                    row["NDCG@20"])
    paper = paper_rows(paper_reference, dataset)
    table = paper_beside(_with_significance(wide, evaluation_significance), paper)
    for column in (c for c in table.columns if c.startswith("paper ") and c != "paper table"):
        table[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")  # the paper lacks it
    lines = [f"# Evaluation: `{dataset}`", ""]
    if not evaluation_significance.empty:
        lines += ["`CI`: percentile bootstrap interval over users; `Δ` and `p`: per-user difference from the "
                  "reference model, Wilcoxon signed-rank and paired t-test (see README, "
                  "\"Reading the significance columns\").", ""]
    if not paper.empty:
        lines += [f"`paper ...` columns: the values the TokenRec paper reports for {paper['paper_dataset'].iloc[0]} "
                  f"(`paper table` = its table). {paper_reference.get('protocol_note', '')}", ""]
    markdown = "\n".join(lines) + "\n" + markdown_table(table) + "\n" + markdown_table(inference_latency)
    return long, markdown, metrics, _bar_chart(wide)


def summarise_headline(evaluation_metrics: pd.DataFrame, tokenizer_diagnostics: pd.DataFrame,
                       llm4rec_training_history: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The run's headline (:func:`tokenrec_pipeline.reporting.run_summary.headline_table`): TokenRec and the best
    baseline on test HR@20 / NDCG@20 for seen and unseen users, item / user collision rates, fit and train seconds,
    as a one-row table and as the ``headline.*`` MLflow metrics that the runs table shows side by side."""
    headline = headline_table(evaluation_metrics, tokenizer_diagnostics, llm4rec_training_history)
    row = headline.iloc[0]
    logger.info("Headline (%s): TokenRec test seen HR@20=%.4f NDCG@20=%.4f; best baseline %s HR@20=%.4f NDCG@20=%.4f",
                row["quantizer"], row["tokenrec seen HR@20"], row["tokenrec seen NDCG@20"], row["best_baseline"] or "-",
                row["best_baseline seen HR@20"], row["best_baseline seen NDCG@20"])
    return headline, headline_to_mlflow(headline)
