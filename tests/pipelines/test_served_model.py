"""The packaged MLflow model as a server sees it: only its two request parameters, private per request."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from tokenrec_pipeline.mlflow_model import TokenRecPipelineModel, check_request_params


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
