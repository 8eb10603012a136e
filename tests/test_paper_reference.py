"""The paper's numbers: loaded from conf/base/paper_reference.yml, only for datasets the paper has."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tokenrec_pipeline.reporting.paper_reference import (
    REFERENCE_FILE,
    PaperReferenceError,
    check_paper_reference,
    load_paper_reference,
    paper_beside,
    paper_dataset,
    paper_reference_path,
    paper_rows,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_paper_reference()


def _value(rows: pd.DataFrame, table: str, model: str, group: str, metric: str) -> float:
    query = "table == @table and model == @model and user_group == @group and metric == @metric"
    return rows.query(query)["value"].item()


def test_our_dataset_names_map_to_the_papers(reference):
    assert paper_dataset(reference, "lastfm") == "LastFM"
    assert paper_dataset(reference, "tokenrec-lastfm") == "LastFM"
    assert paper_dataset(reference, "ml-1m") == "ML1M"
    assert paper_dataset(reference, "beauty") == "Beauty" and paper_dataset(reference, "clothing") == "Clothing"


@pytest.mark.parametrize("dataset", ["synthetic", "ml-100k", "csv"])
def test_datasets_the_paper_lacks_have_no_rows(reference, dataset):
    assert paper_rows(reference, dataset).empty


def test_reported_values_with_their_table(reference):
    lastfm = paper_rows(reference, "lastfm")
    assert _value(lastfm, "II", "tokenrec", "all", "HR@20") == 0.0936
    assert _value(lastfm, "II", "tokenrec", "all", "NDCG@30") == 0.0415
    assert _value(lastfm, "IV", "tokenrec", "unseen", "NDCG@20") == 0.0268
    assert _value(lastfm, "II", "tokenrec (user_only)", "all", "HR@30") == 0.1128
    beauty = paper_rows(reference, "beauty")
    assert _value(beauty, "III", "tokenrec", "all", "HR@20") == 0.0615
    assert _value(beauty, "III", "sasrec", "all", "HR@20") == 0.0472
    assert _value(paper_rows(reference, "ml-1m"), "II", "lightgcn", "all", "NDCG@20") == 0.0509
    assert _value(paper_rows(reference, "clothing"), "III", "mf", "all", "HR@10") == 0.0116
    # every model of Tables II/III: 16 rows x 6 metrics per dataset; Table IV: 5 models x 2 groups x 2 metrics
    assert (lastfm["table"] == "II").sum() == 16 * 6 and (lastfm["table"] == "IV").sum() == 20
    assert set(paper_rows(reference, "ml-1m")["table"]) == {"II"}


def test_report_columns_pick_the_main_table_for_seen_and_table_iv_for_unseen(reference):
    wide = pd.DataFrame({"model": ["tokenrec", "tokenrec", "pop", "tokenrec"],
                         "split": ["test", "test", "test", "valid"],
                         "user_group": ["seen", "unseen", "seen", "seen"], "HR@20": [0.1, 0.08, 0.02, 0.1]})
    out = paper_beside(wide, paper_rows(reference, "lastfm"))
    assert out["paper HR@20"].iloc[0] == 0.0936 and out["paper table"].iloc[0] == "II"
    assert out["paper HR@20"].iloc[1] == 0.0773 and out["paper table"].iloc[1] == "IV"
    assert pd.isna(out["paper HR@10"].iloc[1])  # Table IV reports @20 only
    assert pd.isna(out["paper HR@20"].iloc[2]) and out["paper table"].iloc[2] == ""  # Pop is not in the paper
    assert pd.isna(out["paper HR@20"].iloc[3])  # validation rows get no paper value
    assert paper_beside(wide, paper_rows(reference, "synthetic")).equals(wide)


def test_malformed_reference_names_the_entry(reference):
    broken = {**reference,
              "results": [{"table": "II", "dataset": "Netflix", "user_group": "all", "model": "MF", "HR@10": 0.1}]}
    with pytest.raises(PaperReferenceError, match="Netflix"):
        check_paper_reference(broken)


def _project(folder: Path, with_reference: bool = True) -> Path:
    """A minimal Kedro project (pyproject with [tool.kedro]) holding a copy of the reference, or not."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "tokenrec_pipeline"\n')
    if with_reference:
        (folder / REFERENCE_FILE).parent.mkdir(parents=True)
        shutil.copy(ROOT / REFERENCE_FILE, folder / REFERENCE_FILE)
    return folder


def test_the_reference_is_found_in_the_kedro_project_of_the_working_directory(tmp_path, monkeypatch):
    project = _project(tmp_path / "elsewhere")
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")  # a subfolder: found the way `kedro run` finds its project
    assert paper_reference_path() == project / REFERENCE_FILE
    assert paper_dataset(load_paper_reference(), "lastfm") == "LastFM"
    monkeypatch.chdir(tmp_path)  # outside any project: an explicit project still works
    assert paper_reference_path(project) == project / REFERENCE_FILE
    assert load_paper_reference(project_path=project) == load_paper_reference(project / REFERENCE_FILE)


def test_a_missing_reference_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a Kedro project, nor any folder above it
    with pytest.raises(FileNotFoundError, match="paper_reference.yml.*not inside a Kedro project"):
        load_paper_reference()
    bare = _project(tmp_path / "bare", with_reference=False)
    with pytest.raises(FileNotFoundError, match=f"{bare / REFERENCE_FILE}.* does not exist"):
        load_paper_reference(project_path=bare)
    with pytest.raises(FileNotFoundError, match="nowhere.yml"):
        load_paper_reference(tmp_path / "nowhere.yml")


def test_the_catalog_entry_reads_the_same_file():
    catalog = yaml.safe_load((ROOT / "conf" / "base" / "catalog_evaluation.yml").read_text(encoding="utf-8"))
    assert Path(catalog["paper_reference"]["filepath"]) == REFERENCE_FILE
