"""Requests parsing and unknown-id handling of the serving helpers."""

from __future__ import annotations

import pandas as pd
import pytest

from tokenrec_pipeline.serving import UnknownIdError, map_history, parse_requests


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
    from tokenrec_pipeline.serving import requests_from_frame, requests_to_frame

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
