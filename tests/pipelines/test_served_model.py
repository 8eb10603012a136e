"""The packaged MLflow model as a server sees it: only its two request parameters, private per request."""

from __future__ import annotations

import importlib
import inspect
import sys
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pandas as pd
import pytest
from kedro.pipeline import Pipeline, node
from kedro_mlflow.pipeline.pipeline_ml import KedroMlflowPipelineMLError, PipelineML
from mlflow.exceptions import MlflowException

from tokenrec_pipeline.io.mlflow_model import TokenRecPipelineModel, TrainingPipelineML, check_request_params


@pytest.fixture(scope="module")
def served(tiny_full_run):
    mlflow.set_tracking_uri(f"sqlite:///{tiny_full_run / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["tokenrec_pipeline"]).iloc[0]
    model = mlflow.pyfunc.load_model(f"runs:/{run['run_id']}/tokenrec_recommender")
    user_map = pd.read_parquet(tiny_full_run / "data/03_primary/user_map.parquet")
    users = user_map.loc[user_map["user_group"] == "seen", "original_user"].astype(str).tolist()
    return model, users


def test_check_request_params_accepts_only_the_two_request_parameters() -> None:
    assert check_request_params({"recommend.top_k": 5, "recommend.on_unknown_item": "skip"}) == {
        "recommend.top_k": 5, "recommend.on_unknown_item": "skip"}
    # MLflow hands every parameter of the logged signature over with its logged value: accepted unchanged, dropped
    logged = {"runner": "SequentialRunner", "seed": 42}
    assert check_request_params({"runner": "SequentialRunner", "seed": 42, "recommend.top_k": 3}, logged) == {
        "recommend.top_k": 3}
    for params, named in [({"runner": "os.abort"}, "runner"), ({"recommend.topk": 5}, "recommend.topk"),
                          ({"seed": 1}, "seed"), ({"recommend.top_k": 2.7}, "recommend.top_k"),
                          ({"recommend.top_k": "ten"}, "recommend.top_k"), ({"recommend.top_k": 10**8}, "1000"),
                          ({"recommend.top_k": 0}, "recommend.top_k"), ({"recommend.top_k": True}, "recommend.top_k"),
                          ({"recommend.on_unknown_item": "drop"}, "on_unknown_item")]:
        with pytest.raises(MlflowException, match=named) as raised:
            check_request_params(params, logged)
        assert raised.value.get_http_status_code() == 400


def _identity(x):
    return x


def _predict(model, request):
    return request


def test_the_private_kedro_mlflow_method_it_overrides_is_still_the_one_slices_go_through() -> None:
    """``TrainingPipelineML`` overrides kedro-mlflow's private ``PipelineML._turn_pipeline_to_ml`` (kedro-mlflow is
    pinned to its minor version in pyproject.toml for this): fails when a release renames it, changes its
    parameters or stops sending a slice (``filter``, ``from_nodes``, ``only_nodes_with_tags`` ...) through it."""
    base = PipelineML.__dict__.get("_turn_pipeline_to_ml")
    assert callable(base), "kedro-mlflow's PipelineML has no _turn_pipeline_to_ml any more: the override is dead"
    assert "_turn_pipeline_to_ml" in TrainingPipelineML.__dict__  # ours, not inherited
    assert list(inspect.signature(base).parameters) == ["self", "pipeline"]
    assert list(inspect.signature(TrainingPipelineML._turn_pipeline_to_ml).parameters) == ["self", "pipeline"]

    training = Pipeline([node(_identity, "raw", "model_artefact", name="fit", tags=["fit"]),
                         node(_identity, "raw", "side_table", name="side", tags=["side"])])
    inference = Pipeline([node(_predict, ["model_artefact", "request"], "answer", name="predict")])
    kwargs = {"nodes": training.nodes, "inference": inference, "input_name": "request"}
    ours, theirs = TrainingPipelineML(**kwargs), PipelineML(**kwargs)
    with pytest.raises(KedroMlflowPipelineMLError):  # what the override exists for
        theirs.filter(node_names=["side"])
    for partial in (ours.filter(node_names=["side"]), ours.from_nodes("side"), ours.only_nodes_with_tags("side")):
        assert type(partial) is Pipeline and {n.name for n in partial.nodes} == {"side"}
    for whole in (ours.filter(node_names=["fit"]), ours.only_nodes_with_tags("fit", "side")):
        assert isinstance(whole, TrainingPipelineML) and whole.inference is inference  # still logs the model


def test_kedro_mlflow_hook_builds_the_projects_model_class() -> None:
    """The hook module's ``KedroPipelineModel`` is swapped for ``TokenRecPipelineModel`` (mlflow_model.py): fails
    when kedro-mlflow's hook stops building the logged model from that module-level name."""
    hook_module = importlib.import_module("kedro_mlflow.framework.hooks.mlflow_hook")
    assert hook_module.KedroPipelineModel is TokenRecPipelineModel
    assert "KedroPipelineModel(" in inspect.getsource(hook_module.MlflowHook.after_pipeline_run)


@pytest.mark.slow
def test_served_model_refuses_a_runner_and_reports_request_errors(served) -> None:
    model, users = served
    assert isinstance(model.unwrap_python_model(), TokenRecPipelineModel)  # the hook logged our class
    request = pd.DataFrame({"user": [users[0]], "history": [None]})
    modules_before = set(sys.modules)
    with pytest.raises(MlflowException, match="runner"):
        model.predict(request, params={"runner": "os.abort"})
    assert "os.abort" not in sys.modules and set(sys.modules) == modules_before  # nothing imported
    with pytest.raises(MlflowException, match="unknown user id 'no-such-user'") as raised:
        model.predict(pd.DataFrame({"user": ["no-such-user"], "history": [None]}))
    assert "Traceback" not in str(raised.value) and raised.value.get_http_status_code() == 400
    assert len(model.predict(request, params={"recommend.top_k": 1000})) <= 1000  # clipped to the catalogue


@pytest.mark.slow
def test_concurrent_requests_each_get_their_own_top_k(served) -> None:
    model, users = served

    def ask(i: int) -> tuple[int, int]:
        k = 1 + i % 7
        recs = model.predict(pd.DataFrame({"user": [users[i % len(users)]], "history": [None]}),
                             params={"recommend.top_k": k})
        return k, len(recs)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, range(200)))
    assert all(asked == got for asked, got in answers), [a for a in answers if a[0] != a[1]][:5]
