"""Project-specific Kedro datasets.

* ``RawDataDirectory`` — the raw data root (``data/01_raw``). Like ``PartitionedDataset`` it
  loads lazily: ``load()`` returns a handle whose ``read(dataset, options)`` reads (and if
  needed downloads) one named dataset, because which files to read depends on ``params:dataset``.
* ``Atomic*Dataset`` — kedro-datasets' Parquet/CSV/JSON datasets whose ``save`` writes a
  temporary file next to the target and renames it into place, so a crash mid-write never leaves
  a half-written artefact where a good one was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.plotly import JSONDataset as PlotlyJSONDataset

from tokenrec_pipeline.core.folders import atomic_file, atomic_folder
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
        original = self._filepath
        with atomic_file(target) as tmp:
            self._filepath = PurePosixPath(tmp)
            try:
                super().save(data)
            finally:
                self._filepath = original
        self._invalidate_cache()


class AtomicParquetDataset(_AtomicSaveMixin, ParquetDataset):
    """``pandas.ParquetDataset`` with atomic saves."""


class AtomicCSVDataset(_AtomicSaveMixin, CSVDataset):
    """``pandas.CSVDataset`` with atomic saves."""


class AtomicJSONDataset(_AtomicSaveMixin, JSONDataset):
    """``json.JSONDataset`` with atomic saves."""


class AtomicMatplotlibDataset(_AtomicSaveMixin, MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` (one figure per file) with atomic saves; kedro viz previews it."""


class AtomicPlotlyJSONDataset(_AtomicSaveMixin, PlotlyJSONDataset):
    """``plotly.JSONDataset`` with atomic saves; kedro viz previews it as an interactive chart."""


class SafetensorsDataset(AbstractDataset[dict, dict]):
    """A dict of named tensors in one ``.safetensors`` file (no pickle), saved atomically."""

    def __init__(self, filepath: str, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self._filepath))

    def save(self, data: dict) -> None:
        from safetensors.torch import save_file

        with atomic_file(self._filepath) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in data.items()}, str(tmp))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return self._filepath.is_file()


class SkippedModel:
    """Stands for a model whose stage a parameter switched off (Kedro refuses to save ``None``)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SkippedModel)

    def __hash__(self) -> int:
        return hash(SkippedModel)

    def __repr__(self) -> str:
        return "SkippedModel()"


class ModelDirectoryDataset(AbstractDataset[Any, Any]):
    """A model saved as a folder by its own ``save(folder)`` and read back by ``loader(folder)``.

    ``loader`` is a dotted path to a function (e.g. ``tokenrec_pipeline.models.tokenizers.load_tokenizer``);
    ``saver`` the name of the model's method that writes the folder (``save`` or ``save_pretrained``).
    The model is written into a fresh sibling folder and swapped in with renames, so a failed save
    leaves the previous model intact.

    ``optional: true`` is for stages that a parameter can switch off: saving a :class:`SkippedModel`
    writes a folder holding only a ``SKIPPED`` marker (so the catalogue records that the model was not
    trained, and no stale model from an earlier run survives), and loading that folder returns one.
    """

    SKIPPED_MARKER = "SKIPPED"

    def __init__(self, path: str, loader: str, saver: str = "save", optional: bool = False,
                 metadata: dict | None = None):
        # ``_filepath`` is the attribute kedro-mlflow reads when it packages catalog artefacts into an MLflow model.
        self._filepath = Path(path)
        self._loader_path = loader
        self._saver = saver
        self._optional = optional
        self.metadata = metadata

    def _loader(self):
        import importlib

        module, _, name = self._loader_path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def load(self) -> Any:
        path = Path(self._filepath)
        if (path / self.SKIPPED_MARKER).is_file():
            if not self._optional:
                raise ValueError(f"{path} holds a model that was skipped (switched off); nothing to load.")
            return SkippedModel()
        return self._loader()(path)

    def _write_skipped(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.SKIPPED_MARKER).write_text("This stage was switched off by a parameter; no model was trained.\n")

    def save(self, data: Any) -> None:
        path = Path(self._filepath)
        if isinstance(data, SkippedModel) and not self._optional:
            raise ValueError(f"Refusing to save a skipped model in {path}: this model is not optional.")
        with atomic_folder(path, create=False) as staging:
            if isinstance(data, SkippedModel):
                self._write_skipped(staging)
            else:
                getattr(data, self._saver)(staging)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "loader": self._loader_path, "optional": self._optional}

    def _exists(self) -> bool:
        return Path(self._filepath).is_dir()


class FaissIndexDataset(AbstractDataset[Any, Any]):
    """The item index (``tokenrec_pipeline.evaluation.item_index.ItemIndex``) as one faiss file.

    The file keeps the index kind (``indexing.faiss_factory``: Flat, IVF, HNSW …), the item ids and the
    search parameters; ``search_params`` (e.g. ``{nprobe: 64}``) overrides the saved ones on load, to
    trade recall for speed at serving time without rebuilding.
    """

    def __init__(self, filepath: str, use_gpu: bool | str = "auto", search_params: dict | None = None,
                 metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._use_gpu = use_gpu
        self._search_params = search_params
        self.metadata = metadata

    def load(self) -> Any:
        from tokenrec_pipeline.evaluation.item_index import load_item_index

        return load_item_index(self._filepath, use_gpu=self._use_gpu, search_params=self._search_params)

    def save(self, data: Any) -> None:
        from tokenrec_pipeline.evaluation.item_index import save_item_index

        save_item_index(data, self._filepath)  # writes a temp file, then renames

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "search_params": self._search_params}

    def _exists(self) -> bool:
        return self._filepath.is_file()
