"""Atomic saves: a failed write never replaces a good artefact."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from tokenrec_pipeline.io.datasets import AtomicParquetDataset, ModelDirectoryDataset, SafetensorsDataset, SkippedModel


def test_failed_parquet_save_keeps_previous_file(tmp_path):
    dataset = AtomicParquetDataset(filepath=str(tmp_path / "t.parquet"))
    dataset.save(pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(DatasetError):
        dataset.save(pd.DataFrame({"a": [object(), object()]}))  # pyarrow cannot write this
    pd.testing.assert_frame_equal(dataset.load(), pd.DataFrame({"a": [1, 2]}))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left behind


def test_safetensors_round_trip(tmp_path):
    dataset = SafetensorsDataset(filepath=str(tmp_path / "e.safetensors"))
    dataset.save({"item_embeddings": torch.arange(6.0).reshape(3, 2)})
    assert torch.equal(dataset.load()["item_embeddings"], torch.arange(6.0).reshape(3, 2))


class _Folder:
    def __init__(self, text: str, fail: bool = False):
        self.text, self.fail = text, fail

    def save(self, folder):
        folder.mkdir()
        (folder / "model.txt").write_text(self.text)
        if self.fail:
            raise RuntimeError("disk full")


def load_folder(folder):
    return (folder / "model.txt").read_text()


def test_model_directory_failed_save_keeps_previous_model(tmp_path):
    dataset = ModelDirectoryDataset(path=str(tmp_path / "model"), loader=f"{__name__}.load_folder")
    dataset.save(_Folder("v1"))
    dataset.save(_Folder("v2"))
    with pytest.raises(Exception, match="disk full"):
        dataset.save(_Folder("v3", fail=True))
    assert dataset.load() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_optional_model_directory_records_a_skipped_model(tmp_path):
    optional = ModelDirectoryDataset(path=str(tmp_path / "model"), loader=f"{__name__}.load_folder", optional=True)
    optional.save(_Folder("v1"))
    optional.save(SkippedModel())  # the stage was switched off: no stale v1 may survive
    assert optional.load() == SkippedModel()
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["SKIPPED"]
    required = ModelDirectoryDataset(path=str(tmp_path / "model"), loader=f"{__name__}.load_folder")
    with pytest.raises(Exception, match="was skipped"):
        required.load()
    required_other = ModelDirectoryDataset(path=str(tmp_path / "other"), loader=f"{__name__}.load_folder")
    required_other.save(_Folder("v1"))
    with pytest.raises(Exception, match="not optional"):
        required_other.save(SkippedModel())
    assert required_other.load() == "v1"
