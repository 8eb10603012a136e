"""`kedro run` of the data stages, cf_pretraining (the teacher, LightGCN) and the baselines stage on a tiny
synthetic set: SASRec/BERT4Rec rows land in the baseline table, a switched-off baseline does not."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tests.conftest import run_kedro

TINY_BASELINES = {
    "ingestion": {"synthetic": {"n_users": 120, "n_items": 60, "n_groups": 4, "mean_history": 12.0}},
    "cf_pretraining": {"lightgcn": {"epochs": 3, "patience": 2}},
    "baselines": {
        "enabled": ["pop", "sasrec", "bert4rec"],  # lightgcn is cf_pretraining.model: trained, row dropped
        "mf": {"epochs": 3, "patience": 2},
        "sasrec": {"epochs": 3, "patience": 2, "hidden_size": 16, "max_length": 10},
        "bert4rec": {"epochs": 3, "patience": 2, "hidden_size": 16, "max_length": 10},
    },
}


@pytest.mark.slow
def test_sequential_rows_in_the_baseline_table_and_disabled_baselines_skipped(kedro_project):
    run_kedro(kedro_project, ["ingestion", "preprocessing", "cf_pretraining", "baselines"], TINY_BASELINES)

    table = pd.read_csv(kedro_project / "data/08_reporting/baseline_metrics.csv")
    assert set(table["model"]) == {"pop", "sasrec", "bert4rec"}
    for model in ("sasrec", "bert4rec"):
        rows = table[(table["model"] == model) & (table["split"] == "test")]
        assert set(rows["user_group"]) == {"seen", "unseen"}
        assert rows["value"].between(0, 1).all() and len(rows) == 2 * 6
        ranks = pd.read_parquet(kedro_project / f"data/07_model_output/ranks/{model}_ranks.parquet")
        assert set(ranks["split"]) == {"valid", "test"} and (ranks["rank"] >= 0).all()
        history = pd.read_csv(kedro_project / f"data/08_reporting/baselines/{model}_training_history.csv")
        assert 1 <= len(history) <= 3 and history["valid_NDCG@20"].notna().all()

    # mf is off and not the tokenizers' model: not trained at all; lightgcn is trained (tokenizers need it)
    assert pd.read_csv(kedro_project / "data/08_reporting/cf/mf_training_history.csv").empty
    assert not pd.read_csv(kedro_project / "data/08_reporting/cf/lightgcn_training_history.csv").empty
    assert (kedro_project / "data/06_models/cf/cf_embeddings.safetensors").stat().st_size > 0

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["tokenrec_pipeline"]).iloc[0]
    sasrec_seen = "model == 'sasrec' and split == 'test' and user_group == 'seen' and metric == 'NDCG@20'"
    assert run["metrics.test.seen.sasrec.NDCG_at_20"] == pytest.approx(table.query(sasrec_seen)["value"].item())
    assert run["metrics.train.sasrec.loss"] > 0 and run["metrics.train.bert4rec.valid_NDCG_at_20"] >= 0  # curves
