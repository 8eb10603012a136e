"""`kedro viz build` exports the lineage of every registered pipeline as a static site."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tokenrec_pipeline.pipeline_registry import register_pipelines


@pytest.mark.slow
def test_viz_build_exports_every_registered_pipeline(kedro_project):
    result = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=kedro_project, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    api = kedro_project / "build" / "api"
    assert (kedro_project / "build" / "index.html").is_file()

    registered = register_pipelines()
    main = json.loads((api / "main").read_text())
    assert {p["id"] for p in main["pipelines"]} == set(registered)
    for name, pipeline in registered.items():
        exported = json.loads((api / "pipelines" / name).read_text())
        assert exported["selected_pipeline"] == name
        tasks = {n["full_name"] for n in exported["nodes"] if n["type"] == "task"}
        assert tasks == {node.name for node in pipeline.nodes}, name
        data = {n["name"] for n in exported["nodes"] if n["type"] == "data"}
        assert {d for d in pipeline.datasets() if not d.startswith("params:")} <= data, name

    figures = {n["name"]: n for n in main["nodes"] if n["name"].startswith("reporting.")}
    assert figures["reporting.metrics_by_model"]["dataset_type"].endswith("JSONDataset")
    assert figures["reporting.items_by_popularity"]["dataset_type"].endswith("MatplotlibDataset")
    assert "__default__" in figures["reporting.training_curves"]["pipelines"]
