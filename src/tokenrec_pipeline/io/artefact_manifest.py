"""Which artefacts belong together: a manifest of every saved artefact's SHA-256 and what it was built from.

Every persisted dataset a ``kedro run`` saves gets a record in ``data/artefact_manifest.json`` (written by
:class:`tokenrec_pipeline.hooks.validation.ArtefactManifestHooks`): its content SHA-256, the node and run
that wrote it, and the SHA-256 of each persisted artefact that node read (through in-memory datasets too).
A node's records are written together, atomically, once all its outputs are saved.

:meth:`ArtefactManifest.stale_artefacts` walks back from the artefacts a run is about to read and
reports (1) an artefact whose file is no longer the one recorded (a run stopped between saving it and
recording it, or someone changed it) and (2) an artefact built from an input that has since been
rewritten (a ``full`` run killed during ``llm4rec`` leaves new tokenizers beside the previous language
model). A node that rewrites its own input (``add_items`` grows the index) records the old SHA-256 as
superseded, so what was built from the old version still belongs with the new one. Artefacts with no
record (older runs, raw files) are not judged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokenrec_pipeline.core.folders import atomic_file

MANIFEST_NAME = "artefact_manifest.json"
SHORT = 12
"""Characters of a SHA-256 quoted in messages."""


class StaleArtefactsError(RuntimeError):
    """The artefacts a run would read were not built from one another."""


def dataset_path(dataset: Any) -> Path | None:
    """The local file or folder behind a Kedro dataset, or None (memory, metrics, remote stores)."""
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None or getattr(dataset, "_protocol", "file") not in ("file", None):
        return None
    return Path(str(filepath))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


def stat_signature(path: Path) -> str | None:
    """A cheap signature of names, sizes and modification times (None when ``path`` does not exist)."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in _files(path):
        info = file.stat()
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{info.st_size}\0"
                      f"{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def content_sha256(path: Path) -> str | None:
    """SHA-256 over the relative names and bytes of a file or of every file in a folder."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update((str(file.relative_to(path)) if path.is_dir() else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtefactRecord:
    """What the manifest knows about one artefact (keyed by its path relative to the project)."""

    name: str
    sha256: str
    stat: str
    node: str
    run_id: str
    saved_at: str
    inputs: dict[str, str]
    supersedes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict) -> ArtefactRecord:
        return cls(**{**data, "supersedes": tuple(data.get("supersedes", ()))})

    def to_json(self) -> dict:
        return {**self.__dict__, "supersedes": list(self.supersedes)}


class ArtefactManifest:
    """The manifest file of one project (``<project>/data/artefact_manifest.json``)."""

    def __init__(self, project_path: Path) -> None:
        self.project_path = project_path
        self.file = project_path / "data" / MANIFEST_NAME

    def key(self, path: Path) -> str:
        """The manifest key of an artefact path: relative to the project when inside it."""
        absolute = path if path.is_absolute() else self.project_path / path
        try:
            return absolute.resolve().relative_to(self.project_path.resolve()).as_posix()
        except ValueError:
            return absolute.resolve().as_posix()

    def _path(self, key: str) -> Path:
        return Path(key) if Path(key).is_absolute() else self.project_path / key

    def records(self) -> dict[str, ArtefactRecord]:
        if not self.file.is_file():
            return {}
        raw = json.loads(self.file.read_text(encoding="utf-8"))
        return {key: ArtefactRecord.from_json(value) for key, value in raw.get("artefacts", {}).items()}

    def current_sha256(self, key: str, record: ArtefactRecord | None = None) -> str | None:
        """The artefact's SHA-256 now: the recorded one while its stat signature is unchanged, else hashed."""
        path = self._path(key)
        if record is not None and stat_signature(path) == record.stat:
            return record.sha256
        return content_sha256(path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.file.with_name(f".{MANIFEST_NAME}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record_node(self, node: str, run_id: str, inputs: dict[str, str], outputs: dict[str, tuple[str, Path]]) -> None:
        """Record the outputs (key -> (dataset name, path)) one node saved, built from ``inputs`` (key -> sha256).

        An output that was also an input (rewritten in place) keeps its old record's inputs and lists the old
        SHA-256 as superseded. Written atomically (temporary file + rename) under a file lock.
        """
        with self._locked():
            records = self.records()
            new_sha = {key: content_sha256(path) or "" for key, (_, path) in outputs.items()}
            built_from = {key: new_sha.get(key, sha) for key, sha in inputs.items()}
            saved_at = datetime.now(UTC).isoformat(timespec="seconds")
            for key, (name, path) in outputs.items():
                old = records.get(key)
                in_place = key in inputs and old is not None
                record_inputs = {**(old.inputs if in_place else {}), **built_from}
                record_inputs = {k: new_sha.get(k, v) for k, v in record_inputs.items()}
                record_inputs.pop(key, None)
                supersedes = (old.sha256, *old.supersedes) if in_place and old.sha256 != new_sha[key] else ()
                records[key] = ArtefactRecord(name, new_sha[key], stat_signature(path) or "", node, run_id, saved_at,
                                              record_inputs, supersedes)
            self._write(records)

    def _write(self, records: dict[str, ArtefactRecord]) -> None:
        body = {"note": "Written by tokenrec_pipeline.hooks.validation.ArtefactManifestHooks; do not edit.",
                "artefacts": {key: record.to_json() for key, record in sorted(records.items())}}
        with atomic_file(self.file) as tmp:
            tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")

    def _stale(self, records: dict[str, ArtefactRecord], key: str) -> str | None:
        """Why the artefact ``key`` is stale (changed since recorded, or older than an input), or None."""
        record = records[key]
        now = self.current_sha256(key, record)
        if now is not None and now != record.sha256:
            return (f"{record.name} ({key}) is not the one run {record.run_id} recorded (node {record.node}): "
                    f"sha256 {now[:SHORT]}, recorded {record.sha256[:SHORT]}. A run stopped after writing it and "
                    "before recording it, or it was changed by hand.")
        rewritten = [(records[source].name, records[source].run_id) for source, built_sha in record.inputs.items()
                     if source in records and built_sha != records[source].sha256
                     and built_sha not in records[source].supersedes]
        if not rewritten:
            return None
        runs = ", ".join(dict.fromkeys(run for _, run in rewritten))
        return (f"{record.name} ({key}) was built by {record.node} in run {record.run_id} from inputs that have "
                f"been rewritten since: {', '.join(name for name, _ in rewritten)} (by run {runs}).")

    def stale_artefacts(self, keys: Iterable[str]) -> list[tuple[str, str]]:
        """(node that wrote it, why) for every stale artefact upstream of ``keys`` (empty: they belong together)."""
        records = self.records()
        problems: list[tuple[str, str]] = []
        stack, seen = [k for k in keys if k in records], set()
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            if (why := self._stale(records, key)) is not None:
                problems.append((records[key].node, why))
            stack.extend(source for source in records[key].inputs if source in records)
        return sorted(problems)

    def rebuild_nodes(self, rebuildable: set[str] | None = None) -> list[str]:
        """The fewest nodes whose ``--from-nodes`` rebuilds every stale artefact of the project (not only those
        one run reads: the slice reads artefacts of its own, which must be current too). ``rebuildable``: the
        node names of the pipeline the command runs (artefacts of other pipelines, e.g. ``recommend``'s
        answers, are left out)."""
        records = self.records()
        stale = {records[key].node for key in records if self._stale(records, key) is not None
                 and (rebuildable is None or records[key].node in rebuildable)}
        producer = {key: record.node for key, record in records.items()}
        upstream: dict[str, set[str]] = {}
        for record in records.values():
            upstream.setdefault(record.node, set()).update(
                producer[source] for source in record.inputs if source in producer)

        def ancestors(node: str) -> set[str]:
            found, todo = set(), list(upstream.get(node, ()))
            while todo:
                parent = todo.pop()
                if parent not in found and parent != node:
                    found.add(parent)
                    todo.extend(upstream.get(parent, ()))
            return found

        return sorted(node for node in stale if not ancestors(node) & stale)

    def check(self, keys: Iterable[str], reader: str, rebuildable: set[str] | None = None) -> None:
        """Raise :class:`StaleArtefactsError` naming every stale artefact and the command that rebuilds them."""
        problems = self.stale_artefacts(keys)
        if not problems:
            return
        listed = "\n".join(f"  - {why}" for why in dict.fromkeys(why for _, why in problems))
        raise StaleArtefactsError(
            f"The artefacts {reader} would read do not belong together (a run stopped part-way, or only part of "
            f"the pipeline was rerun):\n{listed}\nRebuild the stale artefacts and everything after them, with the "
            "--params/--env of the run that wrote their inputs: kedro run --pipeline=full "
            f"--from-nodes={','.join(self.rebuild_nodes(rebuildable))}"
        )
