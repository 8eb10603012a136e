"""`kedro run --pipeline=full` end to end on a tiny synthetic configuration (real MiniLM backbone)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tests.conftest import run_kedro_cli, tree_digest
from tokenrec_pipeline.reporting.run_summary import HEADLINE_METRICS
from tokenrec_pipeline.reporting.tables import METRIC_NAME_PATTERN


@pytest.mark.slow
def test_full_pipeline_produces_every_row_and_one_mlflow_run(tiny_full_run):
    kedro_project = tiny_full_run

    table = pd.read_csv(kedro_project / "data/08_reporting/evaluation_metrics.csv")
    test = table[table["split"] == "test"]
    expected_models = {"pop", "mf", "lightgcn", "sasrec", "bert4rec", "autoregressive (constrained)",
                       "autoregressive (unconstrained)", "tokenrec", "tokenrec (unseen_prompt)", "tokenrec (user_only)",
                       "tokenrec (paper)"}
    for group in ("seen", "unseen"):
        assert set(test.loc[test["user_group"] == group, "model"]) == expected_models
    assert set(test["metric"]) == {f"{m}@{k}" for m in ("HR", "NDCG") for k in (10, 20, 30)}
    assert test["value"].between(0, 1).all()
    generation = pd.read_csv(kedro_project / "data/08_reporting/autoregressive_generation_summary.csv")
    constrained = generation["model"] == "autoregressive (constrained)"
    assert (generation.loc[constrained, "invalid"] == 0).all()  # the trie only lets real items out
    assert generation.loc[~constrained, "invalid"].notna().all() and (generation["generated"] > 0).all()
    for artefact in ("evaluation_hr_ndcg.png", "evaluation_metrics.md", "tokenizer_diagnostics.csv",
                     "baseline_metrics.csv", "inference_latency.csv"):
        assert (kedro_project / "data/08_reporting" / artefact).stat().st_size > 0

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tokenrec_pipeline"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.tokenizer.quantizer"] == "mq"
    # a name and tags that say what the run is; metric names in the one scheme, no dataset-name prefix
    assert run["tags.mlflow.runName"] == "full · synthetic · mq · default"
    assert {run[f"tags.{tag}"] for tag in ("dataset", "quantizer", "recipe", "backbone", "split_strategy")} == {
        "synthetic", "mq", "default", "sentence-transformers/all-MiniLM-L6-v2", "leave_one_out"}
    assert run["metrics.test.seen.tokenrec.HR_at_20"] == pytest.approx(
        test.query("model == 'tokenrec' and user_group == 'seen' and metric == 'HR@20'")["value"].item())
    assert run["metrics.headline.test.seen.tokenrec.HR_at_20"] == run["metrics.test.seen.tokenrec.HR_at_20"]
    assert run["metrics.tokenizer.item.collision_rate"] == run["metrics.headline.tokenizer.item.collision_rate"]
    assert runs[[f"metrics.{name}" for name in HEADLINE_METRICS]].notna().all(axis=None)
    best = test.query("user_group == 'seen' and metric == 'NDCG@20' and not model.str.startswith('tokenrec')")
    assert run["tags.best_baseline"] == best.loc[best["value"].idxmax(), "model"]
    metric_names = [c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")]
    assert len(metric_names) > 100 and not [n for n in metric_names if not METRIC_NAME_PATTERN.match(n)]

    # the reporting stage's figures, on disk and as artifacts of the same MLflow run
    figures = {"metrics_by_model.json", "tokenizer_diagnostics.json", "training_curves.json",
               "items_by_first_token.png", "items_by_popularity.png", "quantizer_comparison.json"}
    assert {p.name for p in (kedro_project / "data/08_reporting/figures").iterdir()} == figures
    assert {a.path.split("/")[-1] for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "figures")} == figures
    bars = json.loads((kedro_project / "data/08_reporting/figures/metrics_by_model.json").read_text())["data"]
    assert {bar["name"] for bar in bars} == expected_models

    # the run logged the recommend path as one MLflow model; it answers a request table in-process
    model = mlflow.pyfunc.load_model(f"runs:/{run['run_id']}/tokenrec_recommender")
    user_map = pd.read_parquet(kedro_project / "data/03_primary/user_map.parquet")
    item_map = pd.read_parquet(kedro_project / "data/03_primary/item_map.parquet")
    seen_user = str(user_map.loc[user_map["user_group"] == "seen", "original_user"].iloc[0])
    new_history = item_map["original_item"].astype(str).head(3).tolist()
    recs = model.predict(pd.DataFrame({"user": [seen_user, None], "history": [None, " ".join(new_history)]}),
                         params={"recommend.top_k": 4})
    assert recs.groupby("request_id").size().to_dict() == {f"user:{seen_user}": 4, "history:1": 4}
    assert recs["item"].isin(item_map["original_item"].astype(str)).all()
    assert recs["user"].map(type).eq(str).all()  # no NaN: the served answer must be valid JSON
    assert not recs.loc[recs["request_id"] == "history:1", "item"].isin(new_history).any()
    split = pd.read_parquet(kedro_project / "data/03_primary/interactions_split.parquet")
    seen_id = user_map.loc[user_map["original_user"].astype(str) == seen_user, "user_id"].item()
    seen_history = split.loc[split["user_id"] == seen_id, "item_id"]
    assert not recs.loc[recs["request_id"] == f"user:{seen_user}", "item_id"].isin(seen_history).any()


@pytest.mark.slow
def test_recommend_and_add_items_without_retraining(tiny_full_copy):
    from tokenrec_pipeline.evaluation.item_index import load_item_index, search

    kedro_project = tiny_full_copy
    model_digest = tree_digest(kedro_project / "data/06_models/llm4rec")
    item_map = pd.read_parquet(kedro_project / "data/03_primary/item_map.parquet")
    user_map = pd.read_parquet(kedro_project / "data/03_primary/user_map.parquet")
    seen_users = user_map.loc[user_map["user_group"] == "seen", "original_user"].head(5).tolist()

    # a brand-new item, liked by five known users
    pd.DataFrame({"user": seen_users, "item": "brand-new-item"}).to_csv(
        kedro_project / "data/01_raw/new_item_interactions.csv", index=False)
    run_kedro_cli(kedro_project, "--pipeline=add_items")
    grown = pd.read_parquet(kedro_project / "data/03_primary/item_map.parquet")
    new_id = int(grown.loc[grown["original_item"] == "brand-new-item", "item_id"].item())
    assert len(grown) == len(item_map) + 1
    grown_index = load_item_index(kedro_project / "data/06_models/item_index.faiss")
    assert new_id in grown_index.ids()
    # recommendable at once: a query pointing at its folded-in vector gets it back first
    new_vector = grown_index.cpu_index.reconstruct(new_id)  # IndexIDMap2: by item id
    top_ids, _ = search(grown_index, new_vector[None, :], 1)
    assert top_ids[0, 0] == new_id

    known = item_map["original_item"].head(3).tolist()
    histories = ";".join(" ".join(h) for h in (known, known + ["brand-new-item", "nope"]))
    run_kedro_cli(kedro_project, "--pipeline=recommend", "--params",
                  f"recommend.users={' '.join(seen_users[:2])},recommend.histories={histories},"
                  f"recommend.top_k={len(grown)},recommend.on_unknown_item=skip")
    recs = pd.read_csv(kedro_project / "data/07_model_output/recommendations.csv", dtype={"item": str, "user": str})
    assert set(recs["request_id"]) == {f"user:{u}" for u in seen_users[:2]} | {"history:0", "history:1"}
    # Ranking the whole catalogue through prompt -> LLM4Rec -> index: every item but the history, the new one too.
    history_0 = recs.loc[recs["request_id"] == "history:0", "item"]
    assert len(history_0) == len(grown) - len(known) and "brand-new-item" in set(history_0)
    assert recs["item"].isin(grown["original_item"]).all()  # never an item outside the catalogue
    for request, history in (("history:0", known), ("history:1", known + ["brand-new-item"])):
        assert not recs.loc[recs["request_id"] == request, "item"].isin(history).any()
    assert tree_digest(kedro_project / "data/06_models/llm4rec") == model_digest  # no model file changed


@pytest.mark.slow
def test_two_runs_with_different_quantizers_are_told_apart_in_mlflow(tiny_full_copy):
    """A second full run with another quantizer (baselines off but Pop, to keep it short): its own name and tags,
    its own headline, and the reporting stage's Table VI puts it beside the first run's quantizer from MLflow."""
    kedro_project = tiny_full_copy
    run_kedro_cli(kedro_project, "--pipeline=full", "--params=tokenizer.quantizer=kmeans,baselines.enabled=pop")

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tokenrec_pipeline"], order_by=["attributes.start_time ASC"])
    assert list(runs["tags.mlflow.runName"]) == ["full · synthetic · mq · default",
                                                 "full · synthetic · kmeans · default"]
    assert list(runs["tags.quantizer"]) == list(runs["params.tokenizer.quantizer"]) == ["mq", "kmeans"]
    assert (runs["tags.dataset"] == "synthetic").all() and (runs["tags.recipe"] == "default").all()
    assert runs[[f"metrics.{name}" for name in HEADLINE_METRICS if "best_baseline" not in name]].notna().all(axis=None)
    assert runs["tags.best_baseline"].iloc[1] == "pop"
    assert runs["metrics.headline.test.seen.best_baseline.NDCG_at_20"].iloc[1] == pytest.approx(
        runs["metrics.test.seen.pop.NDCG_at_20"].iloc[1])
    metric_names = [c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")]
    assert not [name for name in metric_names if not METRIC_NAME_PATTERN.match(name)]

    table = pd.read_csv(kedro_project / "data/08_reporting/quantizer_comparison.csv")
    assert list(table["quantizer"]) == ["mq", "kmeans"]
    assert list(table["run_name"]) == ["full · synthetic · mq · default", "this run"]
    assert table.loc[0, "tokenrec seen HR@20"] == pytest.approx(runs["metrics.test.seen.tokenrec.HR_at_20"].iloc[0])
    assert table.loc[1, "item collision rate"] == pytest.approx(runs["metrics.tokenizer.item.collision_rate"].iloc[1])
