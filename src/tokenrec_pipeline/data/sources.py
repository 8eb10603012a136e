"""Readers that turn each supported raw format into one ``interactions`` table.

Every reader returns a DataFrame with columns ``user`` (str), ``item`` (str), ``timestamp``
(int64, Unix seconds or an ordinal position) and ``rating`` (float64, NaN where the source has
none), in the source's row order. ``read_dataset`` picks the reader for a dataset name and a
folder; bad input raises :class:`DataSourceError` naming the file, column or parameter.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tokenrec_pipeline.data.download import PUBLIC_SOURCES, DownloadError, fetch_public_dataset, file_digest

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user", "item", "timestamp", "rating"]


class DataSourceError(ValueError):
    """Raw data is missing, malformed or inconsistent with the chosen dataset."""


# --------------------------------------------------------------------------- helpers
def _finalise(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Coerce to the common schema and refuse empty results."""
    if frame.empty:
        raise DataSourceError(f"{source} contains no interactions (empty file?).")
    out = pd.DataFrame(
        {
            "user": frame["user"].astype(str).str.strip(),
            "item": frame["item"].astype(str).str.strip(),
            "timestamp": frame["timestamp"].astype(np.int64),
            "rating": pd.to_numeric(frame["rating"], errors="coerce").astype(np.float64)
            if "rating" in frame
            else np.nan,
        }
    )
    return out.reset_index(drop=True)


def _parse_timestamps(values: pd.Series, source: str, column: str, fmt: str | None = None) -> pd.Series:
    """Unix seconds from numbers (s or ms) or date strings; errors name the bad value."""
    numeric = pd.to_numeric(values, errors="coerce")
    if fmt is None and numeric.notna().all():
        seconds = numeric.astype(np.float64)
        # Millisecond epochs (e.g. HetRec tag times) are > 1e11 for any date after 1973.
        if (seconds.abs() > 1e11).any():
            seconds = seconds / 1000.0
        return seconds.round().astype(np.int64)
    parsed = pd.to_datetime(values, format=fmt, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        example = values[bad].iloc[0]
        raise DataSourceError(
            f"{source}: column {column!r} has {int(bad.sum())} unparsable timestamp(s), e.g. "
            f"{example!r}. Use Unix seconds/milliseconds or ISO dates, or set "
            "ingestion.tabular.timestamp_format."
        )
    # pandas 3 may store seconds or microseconds: divide by a Timedelta, not a fixed 1e9.
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(np.int64)


def _check_header(path: Path, sep: str) -> list[str]:
    """Read a delimited file's header and refuse empty files and duplicate column names."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataSourceError(f"{path} is empty: expected a header line and interactions.")
    header = next(csv.reader([first.rstrip("\r\n")], delimiter=sep))
    header = [name.strip() for name in header]
    dupes = sorted({name for name in header if header.count(name) > 1})
    if dupes:
        raise DataSourceError(f"{path}: duplicate column name(s) {dupes} in the header; rename them.")
    return header


def _require_file(folder: Path, candidates: list[str], dataset: str) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise DataSourceError(
        f"No raw file for dataset {dataset!r} in {folder}/: expected one of {candidates}."
    )


# --------------------------------------------------------------------------- readers
def read_recbole_inter(path: Path) -> pd.DataFrame:
    """RecBole atomic ``.inter`` file: TSV header ``user_id:token item_id:token [rating:float] [timestamp:float]``."""
    header = _check_header(path, "\t")
    names = [h.split(":")[0] for h in header]
    for required in ("user_id", "item_id"):
        if required not in names:
            raise DataSourceError(f"{path}: missing column {required!r} in header {header}.")
    frame = pd.read_csv(path, sep="\t", header=0, names=names, dtype=str, quoting=csv.QUOTE_NONE)
    timestamps = (
        _parse_timestamps(frame["timestamp"], str(path), "timestamp")
        if "timestamp" in frame
        else pd.Series(np.arange(len(frame)), dtype=np.int64)
    )
    return _finalise(
        pd.DataFrame({"user": frame["user_id"], "item": frame["item_id"], "timestamp": timestamps,
                      "rating": frame.get("rating")}),
        str(path),
    )


def read_movielens_100k(folder: Path) -> pd.DataFrame:
    """MovieLens-100K: ``u.data`` (tab-separated ``user item rating timestamp``) or ``*.inter``."""
    path = _require_file(folder, ["u.data", "ml-100k.inter"], "ml-100k")
    if path.suffix == ".inter":
        return read_recbole_inter(path)
    frame = pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype=str)
    return _finalise(frame.assign(timestamp=_parse_timestamps(frame["ts"], str(path), "timestamp")), str(path))


def read_movielens_1m(folder: Path) -> pd.DataFrame:
    """MovieLens-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, optionally .gz) or ``*.inter``."""
    path = _require_file(folder, ["ratings.dat", "ratings.dat.gz", "ml-1m.inter"], "ml-1m")
    if path.suffix == ".inter":
        return read_recbole_inter(path)
    return read_double_colon(path)


def read_double_colon(path: Path) -> pd.DataFrame:
    """``user::item::rating::timestamp`` lines (MovieLens 1M/10M style)."""
    # Splitting ourselves avoids pandas' slow python engine for the two-character separator.
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="latin-1") as handle:
        raw = pd.Series(handle.read().splitlines())
    raw = raw[raw.str.strip() != ""]
    parts = raw.str.split("::", expand=True, regex=False)
    if parts.empty or parts.shape[1] != 4:
        raise DataSourceError(f"{path}: expected 4 fields per line separated by '::' (user::item::rating::timestamp).")
    frame = pd.DataFrame({"user": parts[0], "item": parts[1], "rating": parts[2]})
    frame["timestamp"] = _parse_timestamps(parts[3], str(path), "timestamp")
    return _finalise(frame, str(path))


def read_lastfm_hetrec(folder: Path) -> pd.DataFrame:
    """HetRec 2011 Last.fm-2k: ``user_artists.dat`` (``userID artistID weight``), ordered by time.

    ``user_artists.dat`` has play counts but no time. Order comes from
    ``user_taggedartists-timestamps.dat`` (``userID artistID tagID timestamp`` in ms) when present:
    a (user, artist) pair's timestamp is the first time the user tagged that artist. Pairs the user
    never tagged have no time at all; they are placed *before* the user's first tagged artist, in
    file order, so that validation and test items are always ones with a real timestamp. Without
    the timestamps file, the file order is the order (timestamp = row number). The weight (play
    count) is kept as ``rating``.
    """
    path = _require_file(folder, ["user_artists.dat"], "lastfm")
    header = _check_header(path, "\t")
    for column in ("userID", "artistID"):
        if column not in header:
            raise DataSourceError(f"{path}: missing column {column!r} in header {header}.")
    frame = pd.read_csv(path, sep="\t", dtype=str).rename(columns=lambda c: c.strip())
    frame = frame.rename(columns={"userID": "user", "artistID": "item", "weight": "rating"})
    order = np.arange(len(frame), dtype=np.int64)
    tags_path = folder / "user_taggedartists-timestamps.dat"
    if tags_path.is_file():
        tags = pd.read_csv(tags_path, sep="\t", dtype=str).rename(columns=lambda c: c.strip())
        missing = {"userID", "artistID", "timestamp"} - set(tags.columns)
        if missing:
            raise DataSourceError(f"{tags_path}: missing column(s) {sorted(missing)}.")
        tags["ts"] = _parse_timestamps(tags["timestamp"], str(tags_path), "timestamp")
        first = tags.groupby(["userID", "artistID"], sort=False)["ts"].min()
        key = pd.MultiIndex.from_arrays([frame["user"].str.strip(), frame["item"].str.strip()])
        ts = pd.Series(first.reindex(key).to_numpy(), index=frame.index)
        # Untagged pairs: one second before the user's earliest tag, file order kept by the
        # stable chronological sort downstream.
        earliest = ts.groupby(frame["user"]).transform("min")
        ts = ts.fillna(earliest - 1).fillna(0)
        frame["timestamp"] = ts.astype(np.int64)
    else:
        logger.warning("%s not found: ordering Last.fm interactions by file order.", tags_path)
        frame["timestamp"] = order
    return _finalise(frame, str(path))


def read_sequences(path: Path) -> pd.DataFrame:
    """The authors' ``user_sequence.txt`` (and P5 ``sequential_data.txt``): one line per user,
    ``user item item ...`` in chronological order. Timestamp = position in the line."""
    if not path.is_file():
        raise DataSourceError(f"Sequence file {path} not found.")
    with open(path, encoding="utf-8") as handle:
        lines = [line.split() for line in handle if line.strip()]
    if not lines:
        raise DataSourceError(f"{path} is empty: expected lines 'user item item ...'.")
    short = [i for i, tokens in enumerate(lines) if len(tokens) < 2]
    if short:
        raise DataSourceError(f"{path}: line {short[0] + 1} has a user but no items.")
    lengths = np.fromiter((len(t) - 1 for t in lines), dtype=np.int64, count=len(lines))
    users = np.repeat([t[0] for t in lines], lengths)
    items = [item for tokens in lines for item in tokens[1:]]
    positions = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return _finalise(pd.DataFrame({"user": users, "item": items, "timestamp": positions}), str(path))


def read_amazon(folder: Path, category: str) -> pd.DataFrame:
    """Amazon 2014 reviews (McAuley): ``ratings_<Category>.csv`` (``user,item,rating,timestamp``,
    no header) or the 5-core ``reviews_<Category>_5.json.gz`` (one JSON object per line), or, if
    only those are present, a P5/TokenRec sequence file (``sequential_data.txt``/``user_sequence.txt``)."""
    csv_path = folder / f"ratings_{category}.csv"
    json_path = folder / f"reviews_{category}_5.json.gz"
    if csv_path.is_file():
        frame = pd.read_csv(csv_path, header=None, names=["user", "item", "rating", "ts"], dtype=str)
        if frame.empty:
            raise DataSourceError(f"{csv_path} is empty.")
        return _finalise(frame.assign(timestamp=_parse_timestamps(frame["ts"], str(csv_path), "timestamp")), str(csv_path))
    if json_path.is_file():
        with gzip.open(json_path, "rt", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        frame = pd.DataFrame.from_records(records)
        missing = {"reviewerID", "asin", "unixReviewTime"} - set(frame.columns)
        if missing:
            raise DataSourceError(f"{json_path}: missing field(s) {sorted(missing)}.")
        return _finalise(
            pd.DataFrame({"user": frame["reviewerID"], "item": frame["asin"], "rating": frame.get("overall"),
                          "timestamp": _parse_timestamps(frame["unixReviewTime"], str(json_path), "unixReviewTime")}),
            str(json_path),
        )
    for name in ("user_sequence.txt", "sequential_data.txt"):
        if (folder / name).is_file():
            return read_sequences(folder / name)
    raise DataSourceError(
        f"No Amazon {category} file in {folder}/: expected ratings_{category}.csv, "
        f"reviews_{category}_5.json.gz, user_sequence.txt or sequential_data.txt."
    )


def read_tabular(path: Path, columns: dict, file_format: str, sep: str = ",",
                 timestamp_format: str | None = None) -> pd.DataFrame:
    """The user's own log (CSV or Parquet) with a column mapping.

    Args:
        path: the file.
        columns: mapping from our names (``user``, ``item``, ``timestamp``, optional ``rating``)
            to the file's column names. A missing ``timestamp`` mapping means file order.
        file_format: ``csv`` or ``parquet``.
    """
    if not path.is_file():
        raise DataSourceError(f"Interaction file {path} not found (parameter ingestion.tabular.path).")
    if file_format == "csv":
        header = _check_header(path, sep)
        frame = pd.read_csv(path, sep=sep, dtype=str)
    elif file_format == "parquet":
        frame = pd.read_parquet(path)
        header = list(frame.columns)
    else:
        raise DataSourceError(f"ingestion.tabular format {file_format!r} must be 'csv' or 'parquet'.")
    if frame.empty:
        raise DataSourceError(f"{path} has a header but no rows.")
    out = {}
    for ours in ("user", "item", "timestamp", "rating"):
        theirs = columns.get(ours)
        if theirs is None:
            if ours in ("user", "item"):
                raise DataSourceError(f"ingestion.tabular.columns.{ours} is required (the column holding {ours} ids).")
            continue
        if theirs not in frame.columns:
            raise DataSourceError(
                f"{path}: column {theirs!r} (ingestion.tabular.columns.{ours}) not found; "
                f"the file has {header}."
            )
        out[ours] = frame[theirs]
    out["timestamp"] = (
        _parse_timestamps(out["timestamp"], str(path), columns["timestamp"], timestamp_format)
        if "timestamp" in out
        else np.arange(len(frame), dtype=np.int64)
    )
    return _finalise(pd.DataFrame(out), str(path))


# --------------------------------------------------------------------------- dispatch
AMAZON_CATEGORIES = {"beauty": "Beauty", "clothing": "Clothing_Shoes_and_Jewelry"}
SEQUENCE_FILES = ("user_sequence.txt", "sequential_data.txt")


def _public_reader(name: str) -> Callable[[Path], pd.DataFrame]:
    return {
        "ml-100k": read_movielens_100k,
        "ml-1m": read_movielens_1m,
        "lastfm": read_lastfm_hetrec,
        "beauty": lambda folder: read_amazon(folder, AMAZON_CATEGORIES["beauty"]),
        "clothing": lambda folder: read_amazon(folder, AMAZON_CATEGORIES["clothing"]),
    }[name]


KNOWN_DATASETS = ("synthetic", "ml-100k", "ml-1m", "lastfm", "beauty", "clothing", "sequences", "csv", "parquet")


def read_dataset(name: str, raw_root: Path, options: dict | None = None, download: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read dataset ``name`` from ``raw_root/<name>/`` (downloading public data if absent).

    Besides the names in ``KNOWN_DATASETS``, any folder ``raw_root/<name>/`` holding a
    ``user_sequence.txt`` (e.g. the authors' ``tokenrec-lastfm``) is read as sequences.

    Args:
        name: dataset name (``params:dataset``).
        raw_root: the raw data folder, normally ``data/01_raw``.
        options: ``params:ingestion`` (``sequences.path``, ``tabular.*``).
        download: fetch public datasets whose files are absent.

    Returns:
        (interactions, metadata) — metadata records the files read and their SHA-256.
    """
    options = options or {}
    folder = raw_root / name
    metadata: dict = {"dataset": name, "folder": str(folder)}
    if name in ("csv", "parquet"):
        tabular = dict(options.get("tabular") or {})
        if not tabular.get("path"):
            raise DataSourceError(f"dataset={name} needs ingestion.tabular.path (your interaction file).")
        path = Path(tabular["path"])
        frame = read_tabular(path, tabular.get("columns") or {}, name, tabular.get("sep", ","), tabular.get("timestamp_format"))
        metadata["files"] = {str(path): file_digest(path)}
        return frame, metadata
    if name == "sequences" or (name not in KNOWN_DATASETS and any((folder / f).is_file() for f in SEQUENCE_FILES)):
        configured = (options.get("sequences") or {}).get("path") if name == "sequences" else None
        path = Path(configured) if configured else next(
            (folder / f for f in SEQUENCE_FILES if (folder / f).is_file()), folder / SEQUENCE_FILES[0]
        )
        frame = read_sequences(path)
        metadata["files"] = {str(path): file_digest(path)}
        return frame, metadata
    if name not in PUBLIC_SOURCES:
        raise DataSourceError(
            f"Unknown dataset {name!r} (parameter 'dataset'). Choose one of {list(KNOWN_DATASETS)}, "
            f"or put a user_sequence.txt into {folder}/."
        )
    reader = _public_reader(name)
    try:
        frame = reader(folder)
    except DataSourceError as missing:
        if not download or any(folder.glob("*")):
            raise
        try:
            metadata["download"] = fetch_public_dataset(name, folder)
        except DownloadError as error:
            raise DataSourceError(str(error)) from missing
        frame = reader(folder)
    metadata["files"] = {str(p): file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}
    return frame, metadata
