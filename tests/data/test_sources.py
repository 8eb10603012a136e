"""Every loader on a small file written in its source's real format, and its errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from tokenrec_pipeline.data.sources import (
    DataSourceError,
    read_amazon,
    read_dataset,
    read_lastfm_hetrec,
    read_movielens_1m,
    read_movielens_100k,
    read_recbole_inter,
    read_sequences,
    read_tabular,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_movielens_100k_u_data(tmp_path):
    _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    frame = read_movielens_100k(tmp_path)
    assert list(frame.columns) == ["user", "item", "timestamp", "rating"]
    assert frame.to_dict("records")[0] == {"user": "196", "item": "242", "timestamp": 881250949, "rating": 3.0}


def test_recbole_inter(tmp_path):
    path = _write(tmp_path / "x.inter",
                  "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t100\n2\t11\t5\t50\n")
    frame = read_recbole_inter(path)
    assert frame["timestamp"].tolist() == [100, 50]
    assert frame["rating"].tolist() == [4.0, 5.0]


def test_movielens_1m_double_colon_plain_and_gz(tmp_path):
    text = "1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n"
    _write(tmp_path / "a" / "ratings.dat", text)
    with gzip.open(tmp_path / "b" / "ratings.dat.gz" if (tmp_path / "b").mkdir() is None else None, "wt") as out:
        out.write(text)
    plain, zipped = read_movielens_1m(tmp_path / "a"), read_movielens_1m(tmp_path / "b")
    pd.testing.assert_frame_equal(plain, zipped)
    assert plain["item"].tolist() == ["1193", "661", "1357"] and plain["timestamp"].iloc[1] == 978302109


def test_lastfm_orders_by_first_tag_time(tmp_path):
    _write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\r\n2\t51\t13883\r\n2\t52\t11690\r\n2\t53\t100")
    # artist 53 tagged first (twice: the earliest counts), 51 later, 52 never tagged
    _write(tmp_path / "user_taggedartists-timestamps.dat",
           "userID\tartistID\ttagID\ttimestamp\n2\t51\t13\t1238536800000\n2\t53\t1\t1230764400000\n"
           "2\t53\t7\t1235000000000\n")
    frame = read_lastfm_hetrec(tmp_path).set_index("item")
    assert frame.loc["53", "timestamp"] == 1230764400
    assert frame.loc["51", "timestamp"] == 1238536800
    assert frame.loc["52", "timestamp"] < frame.loc["53", "timestamp"]  # untagged: before the first tag
    assert frame.loc["51", "rating"] == 13883


def test_lastfm_without_timestamps_uses_file_order(tmp_path):
    _write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t1\n2\t52\t2\n")
    assert read_lastfm_hetrec(tmp_path)["timestamp"].tolist() == [0, 1]


def test_amazon_ratings_csv_and_5core_json(tmp_path):
    _write(tmp_path / "csv" / "ratings_Beauty.csv", "A1,B01,5.0,1388534400\nA2,B02,3.0,1388620800\n")
    frame = read_amazon(tmp_path / "csv", "Beauty")
    assert frame["user"].tolist() == ["A1", "A2"] and frame["timestamp"].tolist() == [1388534400, 1388620800]
    (tmp_path / "json").mkdir()
    with gzip.open(tmp_path / "json" / "reviews_Beauty_5.json.gz", "wt") as out:
        for user, item, ts in [("A1", "B01", 1388534400), ("A3", "B02", 1388620800)]:
            out.write(json.dumps({"reviewerID": user, "asin": item, "overall": 4.0, "unixReviewTime": ts}) + "\n")
    frame = read_amazon(tmp_path / "json", "Beauty")
    assert frame["user"].tolist() == ["A1", "A3"] and frame["rating"].tolist() == [4.0, 4.0]


def test_sequences_positions_are_time(tmp_path):
    path = _write(tmp_path / "user_sequence.txt", "u1 i1 i2 i3\nu2 i3 i1\n")
    frame = read_sequences(path)
    assert frame["user"].tolist() == ["u1"] * 3 + ["u2"] * 2
    assert frame["timestamp"].tolist() == [0, 1, 2, 0, 1]


def test_tabular_csv_with_column_mapping_and_dates(tmp_path):
    path = _write(tmp_path / "log.csv", "who,what,when\nalice,x,2024-01-02\nbob,y,2024-01-01\n")
    frame = read_tabular(path, {"user": "who", "item": "what", "timestamp": "when"}, "csv")
    assert frame["timestamp"].tolist() == [1704153600, 1704067200]


def test_tabular_parquet(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"u": [1, 2], "i": [3, 4], "t": [10, 20]}).to_parquet(path)
    frame = read_tabular(path, {"user": "u", "item": "i", "timestamp": "t"}, "parquet")
    assert frame["item"].tolist() == ["3", "4"] and frame["rating"].isna().all()


@pytest.mark.parametrize(
    "content, columns, message",
    [
        ("who,what,when\nalice,x,1\n", {"user": "who", "item": "item_id", "timestamp": "when"}, "'item_id'"),
        ("", {"user": "who", "item": "what"}, "empty"),
        ("who,what,when\nalice,x,yesterday-ish\n", {"user": "who", "item": "what", "timestamp": "when"}, "'when'"),
        ("who,who,when\nalice,x,1\n", {"user": "who", "item": "what", "timestamp": "when"}, "duplicate"),
        ("who,what,when\n", {"user": "who", "item": "what", "timestamp": "when"}, "no rows"),
    ],
)
def test_tabular_errors_name_the_problem(tmp_path, content, columns, message):
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(DataSourceError, match=message) as error:
        read_tabular(path, columns, "csv")
    assert "bad.csv" in str(error.value) or "ingestion.tabular" in str(error.value)


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(DataSourceError, match="Unknown dataset 'nope'"):
        read_dataset("nope", tmp_path)


def test_missing_public_files_without_download_say_where_to_put_them(tmp_path):
    with pytest.raises(DataSourceError, match="ml-100k"):
        read_dataset("ml-100k", tmp_path, download=False)


def test_named_folder_with_user_sequence_is_read(tmp_path):
    _write(tmp_path / "tokenrec-lastfm" / "user_sequence.txt", "1 1 2 3\n")
    frame, metadata = read_dataset("tokenrec-lastfm", tmp_path)
    assert len(frame) == 3 and len(next(iter(metadata["files"].values()))) == 64  # sha256 recorded
