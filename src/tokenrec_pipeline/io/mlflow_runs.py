"""A read-only Kedro dataset over MLflow's runs table, so nodes and notebooks read other runs through the catalog."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from kedro.io import AbstractDataset, DatasetError


class MlflowRunsDataset(AbstractDataset[None, pd.DataFrame]):
    """``mlflow.search_runs`` of one experiment as a DataFrame (``run_id``, ``start_time``, ``params.*``,
    ``metrics.*``, ``tags.*``), newest first.

    The tracking store and the experiment are the ones kedro-mlflow set up from ``conf/<env>/mlflow.yml``
    (``experiment_name`` overrides the experiment). Deleted runs and failed runs are left out.
    """

    def __init__(self, experiment_name: str | None = None, filter_string: str = "",
                 metadata: dict[str, Any] | None = None) -> None:
        self._experiment_name = experiment_name
        self._filter_string = filter_string
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        names = [self._experiment_name] if self._experiment_name else None
        runs = mlflow.search_runs(experiment_names=names, filter_string=self._filter_string,
                                  order_by=["attributes.start_time DESC"])
        if "status" in runs:
            runs = runs[runs["status"] != "FAILED"]
        return runs.reset_index(drop=True)

    def save(self, data: pd.DataFrame) -> None:
        raise DatasetError("MlflowRunsDataset is read-only: runs are written by kedro-mlflow during `kedro run`.")

    def _describe(self) -> dict[str, Any]:
        return {"experiment_name": self._experiment_name, "filter_string": self._filter_string}
