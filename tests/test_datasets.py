"""Atomic saves: a failed write never replaces a good artefact."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tokenrec_pipeline.datasets import AtomicParquetDataset, ModelDirectoryDataset, SafetensorsDataset


def test_failed_parquet_save_keeps_previous_file(tmp_path):
    dataset = AtomicParquetDataset(filepath=str(tmp_path / "t.parquet"))
    dataset.save(pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(Exception):
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
