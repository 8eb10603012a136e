"""The baseline registry (``tokenrec_pipeline.core.baselines``) agrees with the pipelines and ``conf/base``: every
baseline is trained by the stage it names, reaches the tables, and can be switched off; no stage imports another
stage's nodes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tokenrec_pipeline.core import baselines as registry
from tokenrec_pipeline.core.baselines import (
    BASELINE_NAMES,
    BASELINES,
    baseline_enabled,
    baseline_table_models,
    cf_model_trained,
    enabled_baselines,
    get_baseline,
    metrics_datasets,
    switched_off_models,
    trained_by,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "tokenrec_pipeline"
CONF_BASE = Path(__file__).resolve().parents[1] / "conf" / "base"


@pytest.fixture(scope="module")
def pipelines():
    from kedro.framework.project import configure_project

    configure_project("tokenrec_pipeline")
    from tokenrec_pipeline.pipeline_registry import register_pipelines

    return register_pipelines()


def test_the_registry_lists_every_baseline_once_in_table_order():
    assert BASELINE_NAMES == ("pop", "mf", "lightgcn", "sasrec", "bert4rec", "autoregressive", "tokenrec_paper")
    assert baseline_table_models() == ("pop", "mf", "lightgcn", "sasrec", "bert4rec")
    assert trained_by("baselines") == ("pop", "mf", "sasrec", "bert4rec")
    assert trained_by("cf_pretraining") == ("lightgcn",)
    assert get_baseline("mf").label == "BPR-MF" and get_baseline("tokenrec_paper").model == "tokenrec (paper)"
    with pytest.raises(KeyError, match="gru4rec"):
        get_baseline("gru4rec")


def test_enabled_lists_are_validated_and_strings_split():
    assert enabled_baselines("pop, lightgcn sasrec") == ["pop", "lightgcn", "sasrec"]
    assert baseline_enabled("mf", ["pop", "mf"]) and not baseline_enabled("mf", "pop")
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_enabled("pop", ["pop", "gru4rec"])
    assert switched_off_models("pop mf lightgcn sasrec bert4rec") == {"autoregressive", "tokenrec (paper)"}
    # the teacher is trained even when its row is off; every model when no list is given
    assert cf_model_trained("lightgcn", ["pop"], "lightgcn") and not cf_model_trained("mf", ["pop"], "lightgcn")
    assert cf_model_trained("mf", None, "lightgcn")


def test_base_parameters_enable_every_baseline_and_hold_the_stage_settings():
    params = {}
    for path in sorted(CONF_BASE.glob("parameters*.yml")):
        params.update(yaml.safe_load(path.read_text()) or {})
    assert tuple(params["baselines"]["enabled"]) == BASELINE_NAMES
    for name in ("mf", "sasrec", "bert4rec"):
        assert params["baselines"][name]["model"] == name
    assert set(params["cf_pretraining"]) == {"model", "fold_in", "lightgcn"}  # the teacher only


def test_each_baseline_is_trained_by_the_stage_it_names(pipelines):
    for baseline in BASELINES:
        stage = pipelines[baseline.stage]
        if baseline.name == "tokenrec_paper":  # trained in llm4rec, scored in evaluation
            assert "paper.llm4rec_model" in stage.all_outputs()
        else:
            assert f"{baseline.name}.metrics" in stage.all_outputs(), baseline
        assert {node.namespace.split(".")[0] for node in stage.nodes} == {baseline.stage}


def test_every_baseline_reaches_the_tables(pipelines):
    report = next(node for node in pipelines["baselines"].nodes if node.name == "baselines.report_baselines")
    assert report.inputs == ["params:baselines.enabled", *metrics_datasets()]
    evaluation = pipelines["evaluation"]
    compare = next(node for node in evaluation.nodes if node.name == "evaluation.compare_with_reference")
    tables = next(node for node in evaluation.nodes if node.name == "evaluation.report_evaluation")
    for baseline in BASELINES:
        assert f"{baseline.name}.ranks" in compare.inputs
        expected = "baseline_metrics" if baseline.in_baseline_table else f"{baseline.name}.metrics"
        assert expected in tables.inputs


def test_stage_pipelines_and_the_old_names(pipelines):
    cf = {node.name for node in pipelines["cf_pretraining"].nodes}
    assert cf == {"cf_pretraining.lightgcn.train_cf_model", "cf_pretraining.select_cf_embeddings"}
    assert "cf_embeddings" in pipelines["cf_pretraining"].all_outputs()
    assert {node.name for node in pipelines["sequential_baselines"].nodes} == {
        "baselines.sasrec.train_sequential_baseline", "baselines.bert4rec.train_sequential_baseline"}
    # the baselines do not feed the tokenizers: the teacher's stage reads nothing the baselines write
    assert not pipelines["cf_pretraining"].inputs() & pipelines["baselines"].all_outputs()


def test_no_pipeline_imports_another_pipelines_nodes():
    for path in (SRC / "pipelines").glob("*/*.py"):
        stage = path.parent.name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    "tokenrec_pipeline.pipelines."):
                other = node.module.split(".")[2]
                assert other == stage or node.module == "tokenrec_pipeline.pipelines", (path, node.module)


def test_the_registry_imports_no_kedro():
    tree = ast.parse(Path(registry.__file__).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in modules if m.split(".")[0] in ("kedro", "kedro_mlflow", "kedro_datasets")}
