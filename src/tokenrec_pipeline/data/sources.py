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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from tokenrec_pipeline.data.download import (
    PUBLIC_SOURCES,
    DownloadError,
    fetch_public_dataset,
    file_digest,
)

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = ["user", "item", "timestamp", "rating"]


class DataSourceError(ValueError):
    """Raw data is missing, malformed or inconsistent with the chosen dataset."""


# --------------------------------------------------------------------------- helpers
MAX_REPORTED_LINES = 5
"""How many line numbers (and values) an error or warning about bad rows quotes."""
REPORT_KEY = "ingestion_report"
"""``DataFrame.attrs`` key under which :func:`_finalise` leaves what it dropped, for ``ingestion_metadata``."""


def _blank(values: pd.Series) -> pd.Series:
    """True where a value is missing (NaN/None) or only whitespace."""
    return values.isna() | values.astype(str).str.strip().eq("")


def _line_numbers(values: pd.Series, first_line: int) -> list[int]:
    """Source line numbers of the first rows of ``values`` (its index is the 0-based row position)."""
    return [int(i) + first_line for i in values.index[:MAX_REPORTED_LINES]]


@contextmanager
def _decoding(path: Path, encoding: str) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` while reading ``path`` into an error naming the file and the parameter."""
    try:
        yield
    except UnicodeDecodeError as error:
        byte = error.object[error.start:error.start + 1] if isinstance(error.object, bytes) else b""
        raise DataSourceError(
            f"{path} is not {encoding} text (undecodable byte {byte!r}): set the parameter ingestion.encoding "
            "to the file's encoding, e.g. --params=ingestion.encoding=latin-1 (or cp1252)."
        ) from None


def _check_number_formats(ids: pd.Series, source: str, column: str) -> None:
    """Refuse ids that spell the same integer two ways ('1' and '1.0'): they would become two users/items."""
    unique = pd.Series(pd.unique(ids.dropna()), dtype=str)
    canonical = unique.str.replace(r"^([+-]?\d+)\.0+$", r"\1", regex=True)
    clashing = canonical.duplicated(keep=False)
    if clashing.any():
        groups = unique[clashing].groupby(canonical[clashing], sort=False).agg(list)
        examples = "; ".join(" and ".join(repr(v) for v in group) for group in groups.head(MAX_REPORTED_LINES))
        raise DataSourceError(
            f"{source}: {len(groups)} {column} id(s) are written in two ways ({examples}), which would make two "
            f"different {column}s of one. Write every {column} id the same way (e.g. integers without '.0': a "
            "float column in a spreadsheet or pandas export does this)."
        )


def _drop_missing_ids(frame: pd.DataFrame, source: str, first_line: int) -> tuple[pd.DataFrame, dict]:
    """Drop rows without a user or item id, with a counted warning; returns (rows kept, what was dropped)."""
    dropped: dict[str, dict] = {}
    missing_any = pd.Series(False, index=frame.index)
    for column in ("user", "item"):
        missing = _blank(frame[column])
        if missing.any():
            lines = _line_numbers(frame.index[missing].to_series(), first_line)
            dropped[f"missing_{column}"] = {"count": int(missing.sum()), "first_lines": lines}
            logger.warning("%s: %d row(s) without a %s id dropped (first at line(s) %s).",
                           source, int(missing.sum()), column, lines)
            missing_any |= missing
    return frame[~missing_any], dropped


def _finalise(frame: pd.DataFrame, source: str, first_line: int = 1) -> pd.DataFrame:
    """Coerce to the common schema and refuse empty results.

    Rows without a user or item id are dropped with a counted warning (kept in ``attrs[REPORT_KEY]`` for
    ``ingestion_metadata.json``); ids that spell one number two ways are refused. ``first_line`` is the
    source line of the row at index 0 (2 below a header), for the line numbers the warnings quote.
    """
    if frame.empty:
        raise DataSourceError(f"{source} contains no interactions (empty file?).")
    rows_read = len(frame)
    frame, dropped = _drop_missing_ids(frame, source, first_line)
    if frame.empty:
        raise DataSourceError(f"{source}: no row has both a user and an item id ({dropped}).")
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
    for column in ("user", "item"):
        _check_number_formats(out[column], source, column)
    out = out.reset_index(drop=True)
    out.attrs[REPORT_KEY] = {"rows_read": rows_read, "rows_dropped": int(rows_read - len(out)),
                             "dropped": dropped}
    return out


def _bad_timestamps(values: pd.Series, bad: pd.Series, source: str, column: str, first_line: int) -> DataSourceError:
    """The error for unparsable timestamps: the real count, the first line numbers and their values."""
    rows = values[bad]
    quoted = ", ".join(
        f"line {line}: {'empty' if _blank(pd.Series([value])).item() else repr(value)}"
        for line, value in zip(_line_numbers(rows, first_line), rows.head(MAX_REPORTED_LINES), strict=True)
    )
    return DataSourceError(
        f"{source}: column {column!r} has {int(bad.sum())} unparsable timestamp(s) out of {len(values)} ({quoted}"
        f"{', ...' if bad.sum() > MAX_REPORTED_LINES else ''}). Fix or remove those rows; use Unix "
        "seconds/milliseconds or ISO dates, or set ingestion.tabular.timestamp_format."
    )


def _parse_timestamps(values: pd.Series, source: str, column: str, fmt: str | None = None,
                      first_line: int = 1) -> pd.Series:
    """Unix seconds from numbers (s or ms) or date strings; errors name the bad rows' lines and values.

    Without ``fmt``, a column whose values are mostly numbers is read as epoch numbers and every
    non-number (or empty value) in it is reported; otherwise it is parsed as dates.
    """
    missing = _blank(values)
    numeric = pd.to_numeric(values.where(~missing), errors="coerce")
    if fmt is None and (~missing).any() and 2 * int(numeric.notna().sum()) >= int((~missing).sum()):
        bad = numeric.isna()
        if bad.any():
            raise _bad_timestamps(values, bad, source, column, first_line)
        seconds = numeric.astype(np.float64)
        # Millisecond epochs (e.g. HetRec tag times) are > 1e11 for any date after 1973.
        if (seconds.abs() > 1e11).any():
            seconds = seconds / 1000.0
        return seconds.round().astype(np.int64)
    parsed = pd.to_datetime(values.where(~missing), format=fmt, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        raise _bad_timestamps(values, bad, source, column, first_line)
    # pandas 3 may store seconds or microseconds: divide by a Timedelta, not a fixed 1e9.
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(np.int64)


def _check_header(path: Path, sep: str, encoding: str = "utf-8") -> list[str]:
    """Read a delimited file's header and refuse empty files and duplicate column names."""
    opener = gzip.open if path.suffix == ".gz" else open
    with _decoding(path, encoding), opener(path, "rt", encoding=encoding, newline="") as handle:
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
def read_recbole_inter(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """RecBole atomic ``.inter`` file: TSV header ``user_id:token item_id:token [rating:float] [timestamp:float]``."""
    header = _check_header(path, "\t", encoding)
    names = [h.split(":")[0] for h in header]
    for required in ("user_id", "item_id"):
        if required not in names:
            raise DataSourceError(f"{path}: missing column {required!r} in header {header}.")
    with _decoding(path, encoding):
        frame = pd.read_csv(path, sep="\t", header=0, names=names, dtype=str, quoting=csv.QUOTE_NONE,
                            encoding=encoding)
    timestamps = (
        _parse_timestamps(frame["timestamp"], str(path), "timestamp", first_line=2)
        if "timestamp" in frame
        else pd.Series(np.arange(len(frame)), dtype=np.int64)
    )
    return _finalise(
        pd.DataFrame({"user": frame["user_id"], "item": frame["item_id"], "timestamp": timestamps,
                      "rating": frame.get("rating")}),
        str(path), first_line=2,
    )


def read_movielens_100k(folder: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """MovieLens-100K: ``u.data`` (tab-separated ``user item rating timestamp``) or ``*.inter``."""
    path = _require_file(folder, ["u.data", "ml-100k.inter"], "ml-100k")
    if path.suffix == ".inter":
        return read_recbole_inter(path, encoding)
    with _decoding(path, encoding):
        frame = pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "ts"], dtype=str,
                            encoding=encoding)
    return _finalise(frame.assign(timestamp=_parse_timestamps(frame["ts"], str(path), "timestamp")), str(path))


def read_movielens_1m(folder: Path, encoding: str | None = None) -> pd.DataFrame:
    """MovieLens-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, optionally .gz) or ``*.inter``."""
    path = _require_file(folder, ["ratings.dat", "ratings.dat.gz", "ml-1m.inter"], "ml-1m")
    if path.suffix == ".inter":
        return read_recbole_inter(path, encoding or "utf-8")
    return read_double_colon(path, encoding or "latin-1")


def read_double_colon(path: Path, encoding: str = "latin-1") -> pd.DataFrame:
    """``user::item::rating::timestamp`` lines (MovieLens 1M/10M style; GroupLens writes them in latin-1)."""
    # Splitting ourselves avoids pandas' slow python engine for the two-character separator.
    opener = gzip.open if path.suffix == ".gz" else open
    with _decoding(path, encoding), opener(path, "rt", encoding=encoding) as handle:
        raw = pd.Series(handle.read().splitlines())
    raw = raw[raw.str.strip() != ""]
    parts = raw.str.split("::", expand=True, regex=False)
    if parts.empty or parts.shape[1] != 4:
        raise DataSourceError(f"{path}: expected 4 fields per line separated by '::' (user::item::rating::timestamp).")
    frame = pd.DataFrame({"user": parts[0], "item": parts[1], "rating": parts[2]})
    frame["timestamp"] = _parse_timestamps(parts[3], str(path), "timestamp")
    return _finalise(frame, str(path))


def read_lastfm_hetrec(folder: Path, encoding: str = "utf-8") -> pd.DataFrame:
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
    header = _check_header(path, "\t", encoding)
    for column in ("userID", "artistID"):
        if column not in header:
            raise DataSourceError(f"{path}: missing column {column!r} in header {header}.")
    with _decoding(path, encoding):
        frame = pd.read_csv(path, sep="\t", dtype=str, encoding=encoding).rename(columns=lambda c: c.strip())
    frame = frame.rename(columns={"userID": "user", "artistID": "item", "weight": "rating"})
    order = np.arange(len(frame), dtype=np.int64)
    tags_path = folder / "user_taggedartists-timestamps.dat"
    if tags_path.is_file():
        with _decoding(tags_path, encoding):
            tags = pd.read_csv(tags_path, sep="\t", dtype=str, encoding=encoding).rename(columns=lambda c: c.strip())
        missing = {"userID", "artistID", "timestamp"} - set(tags.columns)
        if missing:
            raise DataSourceError(f"{tags_path}: missing column(s) {sorted(missing)}.")
        tags["ts"] = _parse_timestamps(tags["timestamp"], str(tags_path), "timestamp", first_line=2)
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
    return _finalise(frame, str(path), first_line=2)


def _refuse_repeated_users(path: Path, users: list[str], line_numbers: list[int]) -> None:
    """A user on two lines of a sequence file has two histories whose order nobody knows: refuse it."""
    first_line: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    for user, line in zip(users, line_numbers, strict=True):
        if user in first_line:
            repeated.setdefault(user, [first_line[user]]).append(line)
        else:
            first_line[user] = line
    if repeated:
        examples = "; ".join(f"user {user!r} on lines {', '.join(map(str, lines))}"
                             for user, lines in list(repeated.items())[:MAX_REPORTED_LINES])
        raise DataSourceError(
            f"{path}: {len(repeated)} user(s) are on more than one line ({examples}). A sequence file has one line "
            "per user, items in time order: merge each user's lines into one."
        )


def read_sequences(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """The authors' ``user_sequence.txt`` (and P5 ``sequential_data.txt``): one line per user,
    ``user item item ...`` in chronological order. Timestamp = position in the line."""
    if not path.is_file():
        raise DataSourceError(f"Sequence file {path} not found.")
    with _decoding(path, encoding), open(path, encoding=encoding) as handle:
        numbered = [(number, line.split()) for number, line in enumerate(handle, start=1) if line.strip()]
    if not numbered:
        raise DataSourceError(f"{path} is empty: expected lines 'user item item ...'.")
    line_numbers = [number for number, _ in numbered]
    lines = [tokens for _, tokens in numbered]
    short = [number for number, tokens in numbered if len(tokens) < 2]
    if short:
        raise DataSourceError(f"{path}: line {short[0]} has a user but no items.")
    _refuse_repeated_users(path, [t[0] for t in lines], line_numbers)
    lengths = np.fromiter((len(t) - 1 for t in lines), dtype=np.int64, count=len(lines))
    users = np.repeat([t[0] for t in lines], lengths)
    items = [item for tokens in lines for item in tokens[1:]]
    positions = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    index = np.repeat(np.asarray(line_numbers) - 1, lengths)
    frame = pd.DataFrame({"user": users, "item": items, "timestamp": positions}, index=index)
    return _finalise(frame, str(path))


def read_amazon(folder: Path, category: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Amazon 2014 reviews (McAuley): ``ratings_<Category>.csv`` (``user,item,rating,timestamp``,
    no header) or the 5-core ``reviews_<Category>_5.json.gz`` (one JSON object per line), or, if
    only those are present, a P5/TokenRec sequence file (``sequential_data.txt``/``user_sequence.txt``)."""
    csv_path = folder / f"ratings_{category}.csv"
    json_path = folder / f"reviews_{category}_5.json.gz"
    if csv_path.is_file():
        with _decoding(csv_path, encoding):
            frame = pd.read_csv(csv_path, header=None, names=["user", "item", "rating", "ts"], dtype=str,
                                encoding=encoding)
        if frame.empty:
            raise DataSourceError(f"{csv_path} is empty.")
        timestamps = _parse_timestamps(frame["ts"], str(csv_path), "timestamp")
        return _finalise(frame.assign(timestamp=timestamps), str(csv_path))
    if json_path.is_file():
        with _decoding(json_path, encoding), gzip.open(json_path, "rt", encoding=encoding) as handle:
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
            return read_sequences(folder / name, encoding)
    raise DataSourceError(
        f"No Amazon {category} file in {folder}/: expected ratings_{category}.csv, "
        f"reviews_{category}_5.json.gz, user_sequence.txt or sequential_data.txt."
    )


def read_tabular(path: Path, columns: dict, file_format: str, sep: str = ",",
                 timestamp_format: str | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """The user's own log (CSV or Parquet) with a column mapping.

    Args:
        path: the file.
        columns: mapping from our names (``user``, ``item``, ``timestamp``, optional ``rating``)
            to the file's column names. A missing ``timestamp`` mapping means file order.
        file_format: ``csv`` or ``parquet``.
        encoding: text encoding of a CSV file (``ingestion.encoding``).
    """
    if not path.is_file():
        raise DataSourceError(f"Interaction file {path} not found (parameter ingestion.tabular.path).")
    if file_format == "csv":
        header = _check_header(path, sep, encoding)
        with _decoding(path, encoding):
            frame = pd.read_csv(path, sep=sep, dtype=str, encoding=encoding)
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
        _parse_timestamps(out["timestamp"], str(path), columns["timestamp"], timestamp_format,
                          first_line=2 if file_format == "csv" else 1)
        if "timestamp" in out
        else np.arange(len(frame), dtype=np.int64)
    )
    return _finalise(pd.DataFrame(out), str(path), first_line=2 if file_format == "csv" else 1)


# --------------------------------------------------------------------------- dispatch
AMAZON_CATEGORIES = {"beauty": "Beauty", "clothing": "Clothing_Shoes_and_Jewelry"}
SEQUENCE_FILES = ("user_sequence.txt", "sequential_data.txt")


def _public_reader(name: str, encoding: str | None) -> Callable[[Path], pd.DataFrame]:
    """The reader of public dataset ``name``; ``encoding`` None keeps each format's own default."""
    text = {"encoding": encoding} if encoding else {}
    return {
        "ml-100k": lambda folder: read_movielens_100k(folder, **text),
        "ml-1m": lambda folder: read_movielens_1m(folder, **text),
        "lastfm": lambda folder: read_lastfm_hetrec(folder, **text),
        "beauty": lambda folder: read_amazon(folder, AMAZON_CATEGORIES["beauty"], **text),
        "clothing": lambda folder: read_amazon(folder, AMAZON_CATEGORIES["clothing"], **text),
    }[name]


def _with_report(frame: pd.DataFrame, metadata: dict) -> tuple[pd.DataFrame, dict]:
    """Move what :func:`_finalise` dropped from ``frame.attrs`` into the metadata (``ingestion_metadata.json``)."""
    report = frame.attrs.pop(REPORT_KEY, None)
    if report is not None:
        metadata["data_quality"] = report
    return frame, metadata


KNOWN_DATASETS = ("synthetic", "ml-100k", "ml-1m", "lastfm", "beauty", "clothing", "sequences", "csv", "parquet")


def read_dataset(name: str, raw_root: Path, options: dict | None = None,
                 download: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read dataset ``name`` from ``raw_root/<name>/`` (downloading public data if absent).

    Besides the names in ``KNOWN_DATASETS``, any folder ``raw_root/<name>/`` holding a
    ``user_sequence.txt`` (e.g. the authors' ``tokenrec-lastfm``) is read as sequences.

    Args:
        name: dataset name (``params:dataset``).
        raw_root: the raw data folder, normally ``data/01_raw``.
        options: ``params:ingestion`` (``sequences.path``, ``tabular.*``, ``encoding``, ``download_sha256``).
        download: fetch public datasets whose files are absent.

    Returns:
        (interactions, metadata) — metadata records the files read and their SHA-256, and under
        ``data_quality`` the rows read and the rows dropped for a missing user or item id.
    """
    options = options or {}
    encoding = options.get("encoding")
    folder = raw_root / name
    metadata: dict = {"dataset": name, "folder": str(folder)}
    if name in ("csv", "parquet"):
        tabular = dict(options.get("tabular") or {})
        if not tabular.get("path"):
            raise DataSourceError(f"dataset={name} needs ingestion.tabular.path (your interaction file).")
        path = Path(tabular["path"])
        frame = read_tabular(path, tabular.get("columns") or {}, name, tabular.get("sep", ","),
                             tabular.get("timestamp_format"), encoding or "utf-8")
        metadata["files"] = {str(path): file_digest(path)}
        return _with_report(frame, metadata)
    if name == "sequences" or (name not in KNOWN_DATASETS and any((folder / f).is_file() for f in SEQUENCE_FILES)):
        configured = (options.get("sequences") or {}).get("path") if name == "sequences" else None
        path = Path(configured) if configured else next(
            (folder / f for f in SEQUENCE_FILES if (folder / f).is_file()), folder / SEQUENCE_FILES[0]
        )
        frame = read_sequences(path, encoding or "utf-8")
        metadata["files"] = {str(path): file_digest(path)}
        return _with_report(frame, metadata)
    if name not in PUBLIC_SOURCES:
        raise DataSourceError(
            f"Unknown dataset {name!r} (parameter 'dataset'). Choose one of {list(KNOWN_DATASETS)}, "
            f"or put a user_sequence.txt into {folder}/."
        )
    reader = _public_reader(name, encoding)
    try:
        frame = reader(folder)
    except DataSourceError as missing:
        if not download or any(folder.glob("*")):
            raise
        try:
            metadata["download"] = fetch_public_dataset(name, folder, sha256=options.get("download_sha256"))
        except DownloadError as error:
            raise DataSourceError(str(error)) from missing
        frame = reader(folder)
    metadata["files"] = {str(p): file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}
    return _with_report(frame, metadata)
