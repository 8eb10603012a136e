"""Real data from ../shared/data through the project's loaders (skipped when absent)."""

from __future__ import annotations

import pytest

from tokenrec_pipeline.data.preprocess import filter_k_core, to_implicit_feedback
from tokenrec_pipeline.data.sources import read_lastfm_hetrec, read_movielens_100k, read_sequences

pytestmark = pytest.mark.realdata


def _counts(frame):
    return frame["user"].nunique(), frame["item"].nunique(), len(frame)


def test_ml_100k_inter_after_5_core(shared_data):
    frame = read_movielens_100k(shared_data / "ml-100k")
    assert _counts(frame) == (943, 1682, 100_000)
    assert _counts(filter_k_core(to_implicit_feedback(frame), 5)) == (943, 1349, 99_287)


@pytest.mark.parametrize(
    "relative, expected",
    [
        ("tokenrec_processed/LastFM/user_sequence.txt", (1_090, 3_646, 52_551)),
        ("tokenrec_processed/Beauty/user_sequence.txt", (22_363, 12_101, 198_502)),
        ("amazon-beauty/sequential_data.txt", (22_363, 12_101, 198_502)),
    ],
)
def test_sequence_files(shared_data, relative, expected):
    frame = read_sequences(shared_data / relative)
    assert _counts(frame) == expected
    # already 5-core and duplicate-free: preprocessing keeps every row
    assert _counts(filter_k_core(to_implicit_feedback(frame), 5)) == expected


def test_lastfm_hetrec_user_artists(shared_data):
    frame = read_lastfm_hetrec(shared_data / "lastfm-hetrec2011")
    assert _counts(frame) == (1_892, 17_632, 92_834)
    assert frame["rating"].sum() == 69_183_975
