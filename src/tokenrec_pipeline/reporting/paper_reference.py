"""The paper's reported numbers (``conf/base/paper_reference.yml``) for a dataset of this project.

The YAML maps the paper's dataset names to ours (``datasets``) and its model names to ours
(``models``), and lists every reported value with its table number (``results``). The evaluation
report prints them beside this run's values; they come from a different protocol and are not
directly comparable (the file's ``protocol_note`` says why).

The pipeline reads the file through the catalog (entry ``paper_reference``); :func:`load_paper_reference`
reads it outside a Kedro run, from the Kedro project it is given or the one around the current directory
(the file is configuration of the project, not of the installed package).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from kedro.utils import find_kedro_project

PAPER_METRICS = ("HR@10", "HR@20", "HR@30", "NDCG@10", "NDCG@20", "NDCG@30")
PAPER_ROW_COLUMNS = ("paper_dataset", "table", "paper_model", "model", "user_group", "metric", "value")
TABLE_ORDER = {"II": 2, "III": 3, "IV": 4}
REFERENCE_FILE = Path("conf") / "base" / "paper_reference.yml"
"""The reference's place in a Kedro project (the catalog entry ``paper_reference`` reads the same file)."""


class PaperReferenceError(ValueError):
    """``paper_reference.yml`` is malformed."""


def paper_reference_path(project_path: str | Path | None = None) -> Path:
    """``conf/base/paper_reference.yml`` of the Kedro project at ``project_path``, else of the Kedro project
    that holds the current directory (``kedro.utils.find_kedro_project``, as ``kedro run`` finds it).

    Raises ``FileNotFoundError`` naming the file when there is no such project or the project lacks it.
    """
    if project_path is None:
        project_path = find_kedro_project(Path.cwd())
        if project_path is None:
            raise FileNotFoundError(
                f"Cannot find {REFERENCE_FILE.as_posix()}: {Path.cwd()} is not inside a Kedro project (no "
                "pyproject.toml with [tool.kedro] here or above). Run from the project, or pass project_path= "
                "or the file's path.")
    path = Path(project_path) / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the Kedro project at {project_path} has no "
                                f"{REFERENCE_FILE.as_posix()} (the paper's reported numbers).")
    return path


def load_paper_reference(path: str | Path | None = None, project_path: str | Path | None = None) -> dict:
    """Read and check ``paper_reference.yml`` (keys ``datasets``, ``models``, ``results``): ``path``, else the
    Kedro project's file (:func:`paper_reference_path` of ``project_path``)."""
    if path is None:
        path = paper_reference_path(project_path)
    elif not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist (the paper's reported numbers, {REFERENCE_FILE.name}).")
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
            raise PaperReferenceError(f"{source}: results[{i}] names dataset {entry['dataset']!r}, "
                                      "not under `datasets`.")
        if str(entry["table"]) not in TABLE_ORDER:
            raise PaperReferenceError(f"{source}: results[{i}] has table {entry['table']!r}; "
                                      f"expected one of {list(TABLE_ORDER)}.")
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
        if row.split != "test":
            continue
        mine = rows[rows["model"] == row.model]
        for group in preference.get(row.user_group, ()):
            match = mine[mine["user_group"] == group]
            if len(match):
                table = min(match["table"], key=TABLE_ORDER.get)
                match = match[match["table"] == table]
                for metric, value in zip(match["metric"], match["value"], strict=True):
                    columns[metric][i] = value
                tables[i] = table
                break
    for metric in PAPER_METRICS:
        out[f"paper {metric}"] = columns[metric]
    out["paper table"] = tables
    return out
