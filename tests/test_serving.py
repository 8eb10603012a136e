"""Requests parsing and unknown-id handling of the serving helpers."""

from __future__ import annotations

import pandas as pd
import pytest

from tokenrec_pipeline.serving.recommend import UnknownIdError, map_history, parse_requests


def test_requests_from_lists_and_command_line_strings():
    from_lists = parse_requests({"users": [1, "u2"], "histories": [[5, 17], "8 9"]})
    from_cli = parse_requests({"users": "1 u2", "histories": "5 17;8 9"})
    assert from_lists == from_cli
    assert [r.request_id for r in from_cli] == ["user:1", "user:u2", "history:0", "history:1"]
    assert from_cli[2].history == ("5", "17")
    with pytest.raises(ValueError, match="recommend.users"):
        parse_requests({})


def test_unknown_items_error_or_skip(caplog):
    ids = pd.Series([0, 1], index=["a", "b"])
    with pytest.raises(UnknownIdError, match=r"\['zz'\]"):
        map_history(("a", "zz"), ids, "error", "history:0")
    assert map_history(("a", "zz", "b"), ids, "skip", "history:0") == [0, 1]
    assert map_history(("b",) * 1000 + ("a", "b"), ids, "error", "history:0") == [1, 0]  # repeats count once
    assert "zz" in caplog.text
    with pytest.raises(UnknownIdError, match="no known item"):
        map_history(("zz",), ids, "skip", "history:0")


def test_request_table_round_trip_and_its_errors():
    from tokenrec_pipeline.serving.recommend import requests_from_frame, requests_to_frame

    requests = parse_requests({"users": "1 u2", "histories": "5 17;8 9"})
    assert requests_from_frame(requests_to_frame(requests)) == requests
    # the MLflow model's JSON: no request_id, missing cells as None/NaN, histories as lists or strings
    table = pd.DataFrame({"user": ["7", None, float("nan")], "history": [None, [3, 4], " 5  6 "]})
    parsed = requests_from_frame(table)
    assert [(r.request_id, r.user, r.history) for r in parsed] == [
        ("user:7", "7", ()), ("history:1", None, ("3", "4")), ("history:2", None, ("5", "6"))]
    with pytest.raises(ValueError, match="row 0: give exactly one"):
        requests_from_frame(pd.DataFrame({"user": ["7"], "history": ["1 2"]}))
    with pytest.raises(ValueError, match="row 0: give exactly one"):
        requests_from_frame(pd.DataFrame({"user": [""], "history": [""]}))
    with pytest.raises(ValueError, match="'user' and/or a 'history' column"):
        requests_from_frame(pd.DataFrame({"items": ["1"]}))
    with pytest.raises(ValueError, match="empty"):
        requests_from_frame(pd.DataFrame({"user": []}))


def test_recommend_items_names_top_k_for_any_bad_value():
    from tokenrec_pipeline.pipelines.recommend.nodes import recommend_items

    for bad in ("ten", 2.7, 0, True, None):
        with pytest.raises(ValueError, match="recommend.top_k must be an integer >= 1"):
            recommend_items(None, None, pd.DataFrame(), pd.DataFrame(), bad)


@pytest.mark.parametrize("fold_in", ["mean", "symmetric"])
def test_a_served_new_user_gets_the_vector_the_evaluation_scored(fold_in):
    """cf_embeddings records its fold-in rule; serving folds a new user in with it (and its scale), so a served
    user equals the evaluated unseen user with the same history, whatever cf_pretraining.fold_in says."""
    import numpy as np
    import torch

    from tokenrec_pipeline.core.artefacts import recorded_fold_in_method
    from tokenrec_pipeline.core.baselines import train_cf_model
    from tokenrec_pipeline.data.preprocess import filter_k_core, split_leave_one_out, to_implicit_feedback
    from tokenrec_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_interactions
    from tokenrec_pipeline.evaluation.ranking import eval_inputs_from_splits
    from tokenrec_pipeline.serving.recommend import new_user_vectors

    log = generate_synthetic_interactions(SyntheticConfig(n_users=150, n_items=80, n_groups=4), 0)
    core = filter_k_core(to_implicit_feedback(log.astype({"user": str, "item": str})), 5)
    split, _, _ = split_leave_one_out(core, 0.1, seed=0)
    embeddings = train_cf_model(split, {"model": "lightgcn", "epochs": 3, "embedding_dim": 16}, fold_in, 0,
                                enabled=["lightgcn"])[0]
    assert recorded_fold_in_method(embeddings) == fold_in
    unseen = eval_inputs_from_splits(split, "unseen", "test")
    histories = [unseen.history_indices[a:b].tolist()
                 for a, b in zip(unseen.history_indptr[:-1], unseen.history_indptr[1:], strict=True)]
    served = new_user_vectors(histories, embeddings)
    torch.testing.assert_close(served, embeddings["unseen_user_embeddings"], atol=1e-5, rtol=1e-5)
    other = "symmetric" if fold_in == "mean" else "mean"
    with pytest.raises(ValueError, match=f"fitted for the fold-in rule '{fold_in}'"):
        new_user_vectors(histories, embeddings, method=other)
    legacy = {key: value for key, value in embeddings.items() if key != "fold_in_method"}
    assert recorded_fold_in_method(legacy) == "symmetric"  # artefacts from before the record
    assert np.isfinite(served.numpy()).all()
