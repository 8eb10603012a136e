"""The researcher notebooks run top to bottom against a project that has been run (TINY configuration)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT, run_kedro_cli

NOTEBOOKS = ("01_data_and_tokens.ipynb", "02_compare_quantizers.ipynb")


def _execute(path: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel whose working directory is the notebook's folder, as when a
    user opens it from ``notebooks/``; a failing cell raises ``CellExecutionError`` with its traceback."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k in ("text/plain", "text/html"))
    return "\n".join(parts)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_committed_without_outputs(name):
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "%load_ext kedro.ipython" in code[0].source


@pytest.mark.slow
def test_notebooks_run_top_to_bottom_on_a_tiny_run(tiny_full_copy):
    kedro_project = tiny_full_copy  # after `full` with quantizer mq: every artefact, the full metrics table
    run_kedro_cli(kedro_project, "--pipelines=tokenization", "--params=tokenizer.quantizer=kmeans")  # a 2nd quantizer
    folder = kedro_project / "notebooks"
    folder.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(PROJECT_ROOT / "notebooks" / name, folder / name)

    data_and_tokens = _text(_execute(folder / NOTEBOOKS[0]))
    assert f"project: {kedro_project}" in data_and_tokens
    assert "share their full token tuple" in data_and_tokens
    assert "<i1-" in data_and_tokens  # item token examples

    quantizers = _text(_execute(folder / NOTEBOOKS[1]))
    assert "2 runs in 'tokenrec_pipeline'" in quantizers  # both runs found in the project's own store
    assert "kmeans" in quantizers and "mq" in quantizers
    # Table VI: only the full run has an evaluation; the tokenization-only kmeans run is in the diagnostics
    assert "1 quantizer(s) with an evaluated run on 'synthetic': mq" in quantizers
    diagnostics_line = next((line for line in quantizers.splitlines()
                             if line.startswith("quantizers with tokenizer diagnostics:")), quantizers[-3000:])
    assert diagnostics_line == "quantizers with tokenizer diagnostics: kmeans, mq", diagnostics_line
    assert not (folder / "mlflow.db").exists()  # the project's store was read, no stray one next to the notebook
