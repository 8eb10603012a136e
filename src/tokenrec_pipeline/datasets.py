"""Project-specific Kedro datasets.

* ``RawDataDirectory`` — the raw data root (``data/01_raw``). Like ``PartitionedDataset`` it
  loads lazily: ``load()`` returns a handle whose ``read(dataset, options)`` reads (and if
  needed downloads) one named dataset, because which files to read depends on ``params:dataset``.
* ``Atomic*Dataset`` — kedro-datasets' Parquet/CSV/JSON datasets whose ``save`` writes a
  temporary file next to the target and renames it into place, so a crash mid-write never leaves
  a half-written artefact where a good one was.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset

from tokenrec_pipeline.data.sources import read_dataset


@dataclass(frozen=True)
class RawData:
    """Handle on the raw data root; reading happens in ``read``."""

    root: Path
    download: bool = True

    def read(self, dataset: str, options: dict | None = None) -> tuple[pd.DataFrame, dict]:
        """Read ``root/<dataset>/`` (downloading public data when absent) -> (interactions, metadata)."""
        return read_dataset(dataset, self.root, options, download=self.download)


class RawDataDirectory(AbstractDataset[None, RawData]):
    """Read-only dataset over the raw data folder (see module docstring)."""

    def __init__(self, path: str, download: bool = True, metadata: dict | None = None):
        self._root = Path(path)
        self._download = download
        self.metadata = metadata

    def load(self) -> RawData:
        return RawData(self._root, self._download)

    def save(self, data: None) -> None:
        raise NotImplementedError("The raw data folder is read-only: place files there by hand.")

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._root), "download": self._download}

    def _exists(self) -> bool:
        return self._root.is_dir()


class _AtomicSaveMixin:
    """Save to ``<target>.<random>.tmp`` in the same folder, then ``os.replace`` onto the target."""

    def save(self, data: Any) -> None:  # type: ignore[override]
        target = PurePosixPath(self._get_save_path())
        if getattr(self, "_protocol", "file") not in ("file", None):
            return super().save(data)  # remote stores have their own semantics
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        original = self._filepath
        self._filepath = tmp
        try:
            super().save(data)
            os.replace(tmp, target)
        finally:
            self._filepath = original
            if Path(tmp).exists():
                Path(tmp).unlink()
        self._invalidate_cache()


class AtomicParquetDataset(_AtomicSaveMixin, ParquetDataset):
    """``pandas.ParquetDataset`` with atomic saves."""


class AtomicCSVDataset(_AtomicSaveMixin, CSVDataset):
    """``pandas.CSVDataset`` with atomic saves."""


class AtomicJSONDataset(_AtomicSaveMixin, JSONDataset):
    """``json.JSONDataset`` with atomic saves."""
