"""Helpers to run the project's pipelines in-process, spaceflights style: a ``DataCatalog`` of
``MemoryDataset``s + ``params:`` entries from ``conf/base`` and ``SequentialRunner`` (no ``kedro run``
subprocess, no hooks, no MLflow, nothing written to disk).

Sub-pipelines are chosen by the datasets they read and write (:func:`pipeline_between`) from the nodes of the
registered ``full`` pipeline, so a test keeps working when a node moves from one stage to another.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

CONF_BASE = Path(__file__).resolve().parents[2] / "conf" / "base"


def deep_merge(into: dict, other: Mapping) -> dict:
    """``other`` laid over ``into`` key by key (as ``conf/local`` over ``conf/base``: merge_strategy soft)."""
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


@lru_cache(maxsize=1)
def _base_parameters() -> dict:
    tree: dict = {}
    for path in sorted(CONF_BASE.glob("parameters*.yml")):
        deep_merge(tree, yaml.safe_load(path.read_text()) or {})
    return tree


def project_parameters(*overrides: Mapping) -> dict:
    """The parameter tree of ``conf/base/parameters*.yml`` (``yaml.safe_load``) with ``overrides`` deep-merged
    over it in order."""
    tree = copy.deepcopy(_base_parameters())
    for override in overrides:
        deep_merge(tree, override)
    return tree


def parameter_entries(parameters: Mapping) -> dict[str, Any]:
    """``params:<key>`` for every key at every depth, as Kedro's context feeds the catalog
    (``params:a`` -> ``{"b": 1}``, ``params:a.b`` -> 1), plus ``parameters``."""
    entries: dict[str, Any] = {"parameters": parameters}

    def add(name: str, value: Any) -> None:
        entries[f"params:{name}"] = value
        if isinstance(value, Mapping):
            for key, sub in value.items():
                add(f"{name}.{key}", sub)

    for key, value in parameters.items():
        add(key, value)
    return entries


@lru_cache(maxsize=1)
def training_pipeline() -> Pipeline:
    """Every node of the registered ``full`` pipeline as a plain ``Pipeline`` (``full`` itself is kedro-mlflow's
    ``PipelineML``, bound to the inference pipeline)."""
    from tokenrec_pipeline.pipeline_registry import register_pipelines

    return Pipeline(register_pipelines()["full"].nodes)


def pipeline_between(inputs: Iterable[str], outputs: Iterable[str]) -> Pipeline:
    """The nodes of ``full`` that lie downstream of ``inputs`` and upstream of ``outputs``, whichever stage
    holds them."""
    return training_pipeline().from_inputs(*inputs).to_outputs(*outputs)


class KeptMemoryDataset(MemoryDataset):
    """A ``MemoryDataset`` the runner cannot release, so a test can read intermediate datasets after the run
    (the runner releases a dataset once its last consumer has run)."""

    def _release(self) -> None:
        pass


def run_in_process(pipeline: Pipeline, data: Mapping[str, Any], parameters: Mapping) -> dict[str, Any]:
    """Run ``pipeline`` with ``SequentialRunner`` on a catalog of ``data`` and ``parameters``.

    Every other dataset of the pipeline is a :class:`KeptMemoryDataset` (also the kedro-mlflow metric and
    artifact datasets of ``conf/base``: nothing is logged). Returns every dataset's value after the run, inputs
    included (Kedro 1.x's ``run`` returns the output *datasets*, not their data).
    """
    params = parameter_entries(parameters)
    missing = {name for name in pipeline.inputs() if name not in data and name not in params}
    assert not missing, f"no data given for the pipeline's inputs {sorted(missing)}"
    catalog = DataCatalog({name: KeptMemoryDataset(value) for name, value in data.items()})
    for name in pipeline.inputs() & params.keys():
        catalog[name] = MemoryDataset(params[name], copy_mode="deepcopy")
    for name in pipeline.datasets() - pipeline.inputs():
        catalog[name] = KeptMemoryDataset()
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog.load(name) for name in pipeline.datasets() if not name.startswith("params:")
            and catalog[name].exists()}
