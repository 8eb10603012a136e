"""The artefact manifest: which artefacts were built from which, and refusing sets that do not belong together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenrec_pipeline.io.artefact_manifest import (
    ArtefactManifest,
    StaleArtefactsError,
    content_sha256,
)


def _write(project: Path, key: str, text: str) -> Path:
    path = project / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _build(manifest: ArtefactManifest, node: str, run: str, inputs: list[str], outputs: dict[str, str]) -> None:
    """Write ``outputs`` (key -> text) as node ``node`` of run ``run`` that read ``inputs``."""
    project = manifest.project_path
    read = {key: content_sha256(project / key) for key in inputs}
    saved = {}
    for key, text in outputs.items():  # a key without a suffix is a model folder holding one file
        written = _write(project, key if Path(key).suffix else f"{key}/config.json", text)
        saved[key] = (Path(key).stem, written if Path(key).suffix else written.parent)
    manifest.record_node(node, run, read, saved)


@pytest.fixture
def trained(tmp_path: Path) -> ArtefactManifest:
    """tokenizer -> tokens -> model, as one complete run `r1` wrote them."""
    manifest = ArtefactManifest(tmp_path)
    _build(manifest, "tokenization.fit", "r1", [], {"data/06_models/tokenizer": "tok v1"})
    _build(manifest, "tokenization.tokenize", "r1", ["data/06_models/tokenizer"], {"data/05/tokens.parquet": "t v1"})
    _build(manifest, "llm4rec.train", "r1", ["data/05/tokens.parquet", "data/06_models/tokenizer"],
           {"data/06_models/model.bin": "m v1"})
    return manifest


SERVING = ["data/06_models/model.bin", "data/05/tokens.parquet", "data/06_models/tokenizer"]


def test_a_complete_run_is_consistent_and_recorded_atomically(trained):
    trained.check(SERVING, "recommend")
    body = json.loads(trained.file.read_text())
    assert body["artefacts"]["data/06_models/model.bin"]["inputs"] == {
        "data/05/tokens.parquet": content_sha256(trained.project_path / "data/05/tokens.parquet"),
        "data/06_models/tokenizer": content_sha256(trained.project_path / "data/06_models/tokenizer")}
    assert [p.name for p in trained.file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_run_stopped_before_the_model_leaves_a_set_that_is_refused(trained):
    # run r2 rebuilt tokenizer and tokens, then was killed before the language model
    _build(trained, "tokenization.fit", "r2", [], {"data/06_models/tokenizer": "tok v2"})
    _build(trained, "tokenization.tokenize", "r2", ["data/06_models/tokenizer"], {"data/05/tokens.parquet": "t v2"})
    with pytest.raises(StaleArtefactsError) as error:
        trained.check(SERVING, "recommend")
    message = str(error.value)
    assert message.startswith("The artefacts recommend would read do not belong together")
    assert ("model (data/06_models/model.bin) was built by llm4rec.train in run r1 from inputs that have been "
            "rewritten since: tokens, tokenizer (by run r2).") in message
    assert message.endswith("kedro run --pipeline=full --from-nodes=llm4rec.train")


def test_the_rebuild_command_covers_every_stale_artefact_with_the_fewest_nodes(trained):
    _build(trained, "eval.score", "r1", ["data/06_models/model.bin"], {"data/08/metrics.csv": "m1"})
    _build(trained, "baselines.train", "r1", ["data/06_models/tokenizer"], {"data/06_models/baseline.bin": "b1"})
    _build(trained, "tokenization.fit", "r2", [], {"data/06_models/tokenizer": "tok v2"})
    # tokenize (stale) covers train and score downstream of it; the baseline is stale on its own
    assert trained.rebuild_nodes() == ["baselines.train", "tokenization.tokenize"]
    # a node of another pipeline (recommend's answers) is not part of the command that runs `full`
    assert trained.rebuild_nodes({"tokenization.tokenize", "llm4rec.train", "eval.score"}) == ["tokenization.tokenize"]


def test_artefact_changed_after_it_was_recorded_is_refused(trained):
    _write(trained.project_path, "data/05/tokens.parquet", "t half-written by a killed run")
    with pytest.raises(StaleArtefactsError, match=r"tokens \(data/05/tokens.parquet\) is not the one run r1 recorded "
                                                 r"\(node tokenization.tokenize\)"):
        trained.check(SERVING, "recommend")


def test_rewriting_an_input_in_place_keeps_what_was_built_from_it(trained):
    # add_items-style: reads the tokens and writes them back grown; the model built from v1 still belongs
    _build(trained, "add_items.add", "r3", ["data/05/tokens.parquet"], {"data/05/tokens.parquet": "t v1 + new"})
    trained.check(SERVING, "recommend")
    record = trained.records()["data/05/tokens.parquet"]
    assert record.supersedes and "data/06_models/tokenizer" in record.inputs


def test_artefacts_without_a_record_are_not_judged(tmp_path):
    _write(tmp_path, "data/06_models/model.bin", "from before the manifest")
    ArtefactManifest(tmp_path).check(["data/06_models/model.bin"], "recommend")
