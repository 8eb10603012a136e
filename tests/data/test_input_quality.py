"""Inputs that used to vanish or mislead: missing ids, ids spelled two ways, repeated sequence users,
bad or missing timestamps, non-UTF-8 files. Each is an error naming the file, or a counted warning in
the log and in ``ingestion_metadata``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from tokenrec_pipeline.data.sources import (
    DataSourceError,
    read_dataset,
    read_sequences,
    read_tabular,
)
from tokenrec_pipeline.io.datasets import RawData
from tokenrec_pipeline.pipelines.ingestion.nodes import ingest_interactions

COLUMNS = {"user": "u", "item": "i", "timestamp": "t"}


def _csv(path: Path, rows: list[str], header: str = "u,i,t") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_rows_without_user_or_item_are_counted_logged_and_recorded(tmp_path, caplog):
    rows = [f"{n % 7},{n % 5},{1_600_000_000 + n}" for n in range(20)]
    rows[3] = f",4,{1_600_000_003}"      # line 5: no user
    rows[9] = f"NaN,2,{1_600_000_009}"   # line 11: pandas reads NaN as missing
    rows[12] = f"5,,{1_600_000_012}"     # line 14: no item
    path = _csv(tmp_path / "log.csv", rows)
    options = {"tabular": {"path": str(path), "columns": COLUMNS}}

    with caplog.at_level(logging.WARNING):
        interactions, metadata = ingest_interactions(RawData(tmp_path), "csv", options, seed=0)

    assert len(interactions) == 17 and "nan" not in set(interactions["user"]) | set(interactions["item"])
    quality = metadata["data_quality"]
    assert quality["rows_read"] == 20 and quality["rows_dropped"] == 3
    assert quality["dropped"]["missing_user"] == {"count": 2, "first_lines": [5, 11]}
    assert quality["dropped"]["missing_item"] == {"count": 1, "first_lines": [14]}
    assert "2 row(s) without a user id dropped (first at line(s) [5, 11])" in caplog.text
    assert "3 of 20 rows dropped (missing_user: 2, missing_item: 1)" in caplog.text


def test_clean_file_records_nothing_dropped(tmp_path):
    path = _csv(tmp_path / "log.csv", ["1,2,10", "1,3,20"])
    _, metadata = read_dataset("csv", tmp_path, {"tabular": {"path": str(path), "columns": COLUMNS}})
    assert metadata["data_quality"] == {"rows_read": 2, "rows_dropped": 0, "dropped": {}}


def test_ids_spelled_two_ways_are_refused(tmp_path):
    path = _csv(tmp_path / "log.csv", ["1,7,10", "1.0,8,20", "2,7,30"])
    with pytest.raises(DataSourceError) as error:
        read_tabular(path, COLUMNS, "csv")
    assert str(error.value).startswith(f"{path}: 1 user id(s) are written in two ways ('1' and '1.0')")


def test_distinct_string_ids_that_look_numeric_are_kept(tmp_path):
    path = _csv(tmp_path / "log.csv", ["01,7,10", "1,8,20", "1.5,7,30"])
    assert read_tabular(path, COLUMNS, "csv")["user"].tolist() == ["01", "1", "1.5"]


def test_user_on_two_lines_of_a_sequence_file_is_refused(tmp_path):
    path = tmp_path / "user_sequence.txt"
    path.write_text("1 10 11 12\n2 10 13\n\n1 14 15\n", encoding="utf-8")
    with pytest.raises(DataSourceError) as error:
        read_sequences(path)
    assert "1 user(s) are on more than one line (user '1' on lines 1, 4)" in str(error.value)
    assert str(path) in str(error.value)


def test_one_bad_timestamp_is_reported_with_its_line_and_value(tmp_path):
    rows = [f"{n % 9},{n % 4},{1_618_921_600 + n}" for n in range(200)]
    rows[150] = "3,2,not-a-time"  # line 152
    path = _csv(tmp_path / "log.csv", rows)
    with pytest.raises(DataSourceError) as error:
        read_tabular(path, COLUMNS, "csv")
    message = str(error.value)
    assert "column 't' has 1 unparsable timestamp(s) out of 200 (line 152: 'not-a-time')" in message
    assert "1618921600" not in message


def test_missing_timestamps_are_reported_as_empty_with_their_lines(tmp_path):
    rows = [f"{n % 9},{n % 4},{1_618_921_600 + n}" for n in range(10)]
    rows[2], rows[6] = "1,2,", "3,1,NaN"
    path = _csv(tmp_path / "log.csv", rows)
    expected = r"has 2 unparsable timestamp\(s\) out of 10 \(line 4: empty, line 8: empty\)"
    with pytest.raises(DataSourceError, match=expected):
        read_tabular(path, COLUMNS, "csv")


def test_bad_dates_in_a_date_column_are_counted_exactly(tmp_path):
    rows = ["1,2,2024-01-01", "1,3,2024-01-02", "2,3,someday", "2,4,2024-01-04"]
    path = _csv(tmp_path / "log.csv", rows)
    with pytest.raises(DataSourceError, match=r"1 unparsable timestamp\(s\) out of 4 \(line 4: 'someday'\)"):
        read_tabular(path, COLUMNS, "csv")


@pytest.mark.parametrize("dataset", ["csv", "sequences"])
def test_non_utf8_file_names_the_file_and_the_encoding_parameter(tmp_path, dataset):
    if dataset == "csv":
        path = tmp_path / "log.csv"
        path.write_bytes("u,i,t\nJosé,1,10\nJosé,2,20\n".encode("latin-1"))
        options = {"tabular": {"path": str(path), "columns": COLUMNS}}
    else:
        path = tmp_path / "seq.txt"
        path.write_bytes("José 1 2 3\n".encode("latin-1"))
        options = {"sequences": {"path": str(path)}}
    with pytest.raises(DataSourceError) as error:
        read_dataset(dataset, tmp_path, options)
    assert str(error.value).startswith(f"{path} is not utf-8 text (undecodable byte b'\\xe9')")
    assert "ingestion.encoding" in str(error.value)

    frame, _ = read_dataset(dataset, tmp_path, {**options, "encoding": "latin-1"})
    assert frame["user"].iloc[0] == "José"


def test_public_reader_takes_the_encoding_parameter(tmp_path):
    folder = tmp_path / "lastfm"
    folder.mkdir()
    text = "userID\tartistID\tweight\n2\t51\t13883\nJö\t52\t11690\n"
    (folder / "user_artists.dat").write_bytes(text.encode("cp1252"))
    with pytest.raises(DataSourceError, match="user_artists.dat is not utf-8 text"):
        read_dataset("lastfm", tmp_path, {}, download=False)
    frame, _ = read_dataset("lastfm", tmp_path, {"encoding": "cp1252"}, download=False)
    assert frame["user"].tolist() == ["2", "Jö"]


def test_sequence_file_quality_is_recorded(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 10 11\n2 10 12\n", encoding="utf-8")
    frame, metadata = read_dataset("sequences", tmp_path, {"sequences": {"path": str(path)}})
    assert isinstance(frame, pd.DataFrame) and not frame.attrs
    assert metadata["data_quality"]["rows_read"] == 4
