"""The paper's reported numbers (``conf/base/paper_reference.yml``) for a dataset of this project.

The YAML maps the paper's dataset names to ours (``datasets``) and its model names to ours
(``models``), and lists every reported value with its table number (``results``). The evaluation
report prints them beside this run's values; they come from a different protocol and are not
directly comparable (the file's ``protocol_note`` says why).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

PAPER_METRICS = ("HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30")
PAPER_ROW_COLUMNS = ("paper_dataset", "table", "paper_model", "model", "user_group", "metric", "value")
TABLE_ORDER = {"II": 2, "III": 3, "IV": 4}
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "conf" / "base" / "paper_reference.yml"


class PaperReferenceError(ValueError):
    """``paper_reference.yml`` is malformed."""


def load_paper_reference(path: str | Path = DEFAULT_PATH) -> dict:
    """Read and check ``paper_reference.yml`` (keys ``datasets``, ``models``, ``results``)."""
    with open(path, encoding="utf-8") as handle:
        reference = yaml.safe_load(handle)
    check_paper_reference(reference, str(path))
    return reference


def check_paper_reference(reference: dict, source: str = "paper_reference.yml") -> None:
    """Raise naming the entry when a result lacks its table/dataset/model or names an unknown dataset."""
    missing = {"datasets", "models", "results"} - set(reference or {})
    if missing:
        raise PaperReferenceError(f"{source} lacks key(s) {sorted(missing)}.")
    for i, entry in enumerate(reference["results"]):
        absent = {"table", "dataset", "user_group", "model"} - set(entry)
        if absent:
            raise PaperReferenceError(f"{source}: results[{i}] lacks {sorted(absent)}.")
        if entry["dataset"] not in reference["datasets"]:
            raise PaperReferenceError(f"{source}: results[{i}] names dataset {entry['dataset']!r}, not under `datasets`.")
        if str(entry["table"]) not in TABLE_ORDER:
            raise PaperReferenceError(f"{source}: results[{i}] has table {entry['table']!r}; expected one of {list(TABLE_ORDER)}.")
        if not set(entry) & set(PAPER_METRICS):
            raise PaperReferenceError(f"{source}: results[{i}] has no metric among {PAPER_METRICS}.")


def paper_dataset(reference: dict, dataset: str) -> str | None:
    """The paper's name for our ``dataset`` (``lastfm`` -> ``LastFM``), None when the paper lacks it."""
    for paper_name, aliases in reference["datasets"].items():
        if dataset == paper_name or dataset in (aliases or []):
            return paper_name
    return None


def paper_rows(reference: dict, dataset: str) -> pd.DataFrame:
    """Every value the paper reports for ``dataset``, long format (:data:`PAPER_ROW_COLUMNS`).

    ``model`` is our model name (NaN for paper models without a counterpart here). Empty when the
    paper has no such dataset (e.g. ``synthetic``, ``ml-100k``).
    """
    name = paper_dataset(reference, dataset)
    rows = [
        {"paper_dataset": name, "table": str(entry["table"]), "paper_model": entry["model"],
         "model": reference["models"].get(entry["model"]), "user_group": entry["user_group"],
         "metric": metric, "value": float(entry[metric])}
        for entry in reference["results"] if name is not None and entry["dataset"] == name
        for metric in PAPER_METRICS if metric in entry
    ]
    return pd.DataFrame(rows, columns=list(PAPER_ROW_COLUMNS))


def paper_beside(wide: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``wide`` (one row per model/split/user_group) with ``paper HR@10`` ... ``paper NDCG@30`` and
    ``paper table`` columns for its test rows.

    Which paper row matches ours: same model; for our ``unseen`` users the paper's unseen users
    (Table IV); for our ``seen`` users the paper's main tables (II/III, every user), falling back
    to Table IV's seen users. Missing values stay empty; nothing is added when ``rows`` is empty.
    """
    if rows.empty:
        return wide
    out = wide.copy()
    rows = rows.dropna(subset=["model"])
    preference = {"seen": ("all", "seen"), "unseen": ("unseen",)}
    columns = {metric: [float("nan")] * len(out) for metric in PAPER_METRICS}
    tables = [""] * len(out)
    for i, row in enumerate(out.itertuples(index=False)):
        if getattr(row, "split") != "test":
            continue
        mine = rows[rows["model"] == getattr(row, "model")]
        for group in preference.get(getattr(row, "user_group"), ()):
            match = mine[mine["user_group"] == group]
            if len(match):
                table = min(match["table"], key=TABLE_ORDER.get)
                match = match[match["table"] == table]
                for metric, value in zip(match["metric"], match["value"]):
                    columns[metric][i] = value
                tables[i] = table
                break
    for metric in PAPER_METRICS:
        out[f"paper {metric}"] = columns[metric]
    out["paper table"] = tables
    return out
