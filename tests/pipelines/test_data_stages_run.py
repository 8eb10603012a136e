"""`kedro run` of the data stages on a tiny synthetic configuration, with its MLflow record."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tests.conftest import run_kedro

TINY = {"ingestion": {"synthetic": {"n_users": 120, "n_items": 80, "n_groups": 4}}}


@pytest.mark.slow
def test_data_stages_write_artefacts_and_one_mlflow_run(kedro_project):
    run_kedro(kedro_project, ["ingestion", "preprocessing"], TINY)

    split = pd.read_parquet(kedro_project / "data/03_primary/interactions_split.parquet")
    assert set(split["split"]) == {"train", "valid", "test", "unseen_history", "unseen_test"}
    stats = pd.read_csv(kedro_project / "data/08_reporting/dataset_statistics.csv")
    assert stats.loc[stats["scope"] == "all", "users"].item() == split["user_id"].nunique()

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tokenrec_pipeline"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.dataset"] == "synthetic" and run["params.ingestion.synthetic.n_users"] == "120"
    assert run["metrics.data.all.users"] == split["user_id"].nunique()
    assert run["tags.dataset"] == "synthetic"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "data")}
    assert artifacts == {"data/dataset_statistics.csv", "data/ingestion_metadata.json"}
