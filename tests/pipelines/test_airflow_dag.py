"""`kedro airflow create --group-by namespace` renders one Airflow task per stage, in dependency order."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tokenrec_pipeline.io.mlflow_model import TrainingPipelineML

STAGES_IN_ORDER = ["ingestion", "preprocessing", "cf_pretraining", "baselines", "tokenization", "prompting",
                   "llm4rec", "indexing", "autoregressive", "evaluation", "reporting"]


def _registered():
    from kedro.framework.project import configure_project

    configure_project("tokenrec_pipeline")
    from tokenrec_pipeline.pipeline_registry import register_pipelines

    return register_pipelines()


def test_partial_runs_of_full_fall_back_to_plain_pipelines():
    full = _registered()["full"]
    assert isinstance(full, TrainingPipelineML)  # the whole run logs the MLflow model
    ingestion_only = full.filter(node_namespaces=["ingestion"])  # one Airflow task
    assert not isinstance(ingestion_only, TrainingPipelineML)
    assert {n.namespace for n in ingestion_only.nodes} == {"ingestion"}
    assert {n.namespace.split(".")[0] for n in full.nodes} == set(STAGES_IN_ORDER) | {"recommend"}


@pytest.mark.slow
def test_airflow_dag_has_one_task_per_stage_in_dependency_order(kedro_project):
    result = subprocess.run([sys.executable, "-m", "kedro", "airflow", "create", "--pipelines", "full",
                             "--group-by", "namespace"], cwd=kedro_project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    dag = (kedro_project / "airflow_dags" / "tokenrec_pipeline_full_dag.py").read_text()

    tasks = set(re.findall(r'@task\(task_id="([^"]+)"\)', dag))
    expected = {stage.replace("_", "-") for stage in STAGES_IN_ORDER} | {"recommend"}
    assert tasks == expected
    for stage in STAGES_IN_ORDER:  # each task runs exactly its stage's namespace of `full`
        assert f'_run_kedro_node(namespaces=["{stage}"])' in dag

    edges = re.findall(r'tasks\["([^"]+)"\] >> tasks\["([^"]+)"\]', dag)
    position = {stage.replace("_", "-"): i for i, stage in enumerate(STAGES_IN_ORDER)}
    position["recommend"] = position["preprocessing"] + 0.5  # the example requests need only the id maps
    assert edges and all(position[a] < position[b] for a, b in edges), edges
    for upstream, downstream in [("ingestion", "preprocessing"), ("prompting", "llm4rec"), ("llm4rec", "evaluation"),
                                 ("indexing", "evaluation"), ("autoregressive", "evaluation"),
                                 ("cf_pretraining", "tokenization"), ("cf_pretraining", "baselines"),
                                 ("baselines", "evaluation")]:
        assert (upstream.replace("_", "-"), downstream.replace("_", "-")) in edges
    # the teacher does not wait for the baselines (SASRec, BERT4Rec), nor does anything before the evaluation
    assert not [(a, b) for a, b in edges if a == "baselines" and b not in ("evaluation", "reporting")], edges
