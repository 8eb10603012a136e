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
    assert "zz" in caplog.text
    with pytest.raises(UnknownIdError, match="no known item"):
        map_history(("zz",), ids, "skip", "history:0")
