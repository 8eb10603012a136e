"""Parameters checked against conf/base before the first node runs: unknown keys, types, ranges."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, TINY
from tokenrec_pipeline.hooks.params_validation import (
    INFERENCE_PRECISIONS,
    PRECISIONS,
    ParameterError,
    load_base_parameters,
    parameter_problems,
    validate_parameters,
)


@pytest.fixture(scope="module")
def base() -> dict:
    return load_base_parameters(PROJECT_ROOT / "conf" / "base")


def _merged(base: dict, override: dict) -> dict:
    def merge(into: dict, other: dict) -> dict:
        for key, value in other.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into
    return merge(copy.deepcopy(base), override)


def test_base_and_the_tests_tiny_configuration_are_valid(base):
    assert parameter_problems(base, base) == []
    assert parameter_problems(_merged(base, TINY), base) == []
    valid_overrides = {"dataset": "lastfm", "baselines": {"enabled": "pop lightgcn"},
                       "llm4rec": {"recipe": "paper", "training": {"samples_per_user": None, "learning_rate": 1}},
                       "tokenizer": {"quantizer": "rqvae", "item": {"overrides": {"beta": 0.5}}},
                       "ingestion": {"sequences": {"path": "x.txt"}, "encoding": "latin-1"}}
    assert parameter_problems(_merged(base, valid_overrides), base) == []


@pytest.mark.parametrize("override, message", [
    ({"llm4rec": {"training": {"batch_size": 0}}}, "llm4rec.training.batch_size=0 must be an integer >= 1"),
    ({"preprocessing": {"unseen_user_fraction": 0.999}},
     "preprocessing.unseen_user_fraction=0.999 must be a number in [0, 0.5]"),
    ({"llm4rec": {"trainng": {"epochs": 1}}},
     "unknown parameter 'llm4rec.trainng' -- did you mean 'llm4rec.training'?"),
    ({"tokenizer": {"codebook_size": 1}}, "tokenizer.codebook_size=1 must be an integer >= 2"),
    ({"tokenizer": {"quantizer": "pq"}}, "tokenizer.quantizer='pq' must be one of ['mq', 'rqvae', 'vqvae', 'kmeans']"),
    ({"tokenizer": {"user": {"overrides": {"betta": 2.0}}}},
     "unknown parameter 'tokenizer.user.overrides.betta' -- did you mean 'tokenizer.user.overrides.beta'?"),
    ({"llm4rec_paper": {"training": {"loss": "hinge"}}},
     "llm4rec_paper.training.loss='hinge' must be one of ['cosine', 'softmax']"),
    ({"seeed": 1}, "unknown parameter 'seeed' -- did you mean 'seed'?"),
    ({"llm4rec": {"training": {"epochs": 2.5}}}, "llm4rec.training.epochs=2.5 must be an integer"),
    ({"cf_pretraining": {"lightgcn": {"lr": 0}}}, "cf_pretraining.lightgcn.lr=0 must be a number > 0"),
    ({"baselines": {"mf": {"lr": 0}}}, "baselines.mf.lr=0 must be a number > 0"),
    ({"cf_pretraining": {"mf": {"epochs": 4}}}, "unknown parameter 'cf_pretraining.mf' -- it moved to 'baselines.mf'"),
    ({"baselines": {"enabled": "pop lightgcm"}}, "baselines.enabled='pop lightgcm' has unknown entries ['lightgcm']"),
    ({"preprocessing": {"temporal_cutoffs": [0.9, 0.8]}}, "must be two quantiles 0 < q1 < q2 < 1"),
    ({"prompting": {"test_template_id": 10}}, "prompting.test_template_id=10 must index prompting.train_templates"),
    ({"recommend": {"top_k": None}}, "recommend.top_k=None must be an integer >= 1, not null"),
])
def test_bad_parameters_are_named_with_the_fix(base, override, message):
    with pytest.raises(ParameterError) as error:
        validate_parameters(_merged(base, override), base)
    assert message in str(error.value)
    assert str(error.value).startswith("1 parameter problem(s), found before any node ran")


def test_every_problem_is_listed_at_once(base):
    bad = _merged(base, {"llm4rec": {"training": {"batch_size": 0}, "trainng": {"epochs": 1}}, "seed": -1})
    assert len(parameter_problems(bad, base)) == 3


def test_precision_choices_match_the_precision_module():
    from tokenrec_pipeline.models import precision

    assert PRECISIONS == precision.TRAINING_PRECISIONS and INFERENCE_PRECISIONS == precision.INFERENCE_PRECISIONS


@pytest.mark.slow
def test_kedro_run_refuses_before_the_first_node_and_opens_no_mlflow_run(kedro_project):
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines=ingestion",
         "--params=llm4rec.trainng.epochs=1,llm4rec.training.batch_size=0"],
        check=False, cwd=kedro_project, capture_output=True, text=True)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert "unknown parameter 'llm4rec.trainng' -- did you mean 'llm4rec.training'?" in output
    assert "llm4rec.training.batch_size=0 must be an integer >= 1" in output
    assert list((kedro_project / "data" / "02_intermediate").iterdir()) == []
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    assert len(mlflow.search_runs(search_all_experiments=True)) == 0
