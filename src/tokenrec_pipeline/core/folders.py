"""Model artefact folders: written atomically, read back with a versioned JSON config.

A model saved with ``save_pretrained`` (LLM4Rec, the autoregressive baseline) is a folder holding a JSON
file ``{"config": ..., "state": {"format_version": ..., ...}}`` next to its weights.
:func:`staged_folder` writes such a folder next to its target and renames it into place, so a crash never
leaves a half-written model where a reader expects a complete one; :func:`read_saved_config` reads the JSON
back and checks its format version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path in the target's folder; on success it is renamed onto
    ``target`` (``os.replace``), on failure removed. A reader never sees a half-written file, and a crash leaves
    the previous file intact. Every single-file artefact of the project is written through this."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str], config_file: str, refusal: str) -> Iterator[Path]:
    """Yield an empty sibling staging folder that replaces ``folder`` when the block succeeds.

    Refuses (``FileExistsError``: "<folder> exists and <refusal>") a non-empty ``folder`` without
    ``config_file`` (not a model artefact); on any error the staging folder is removed and ``folder`` is
    left untouched.
    """
    target = Path(folder)
    if target.exists() and not (target / config_file).exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and {refusal}")
    with atomic_folder(target) as staging:
        yield staging


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike[str], create: bool = True) -> Iterator[Path]:
    """Write a folder atomically: yields a staging folder beside ``folder`` (empty; with ``create=False`` not yet
    created, for savers that create their folder) that replaces ``folder`` when the block succeeds (the old one is
    renamed aside, then deleted) and is removed when it fails, leaving ``folder`` as it was. The folder counterpart
    of :func:`atomic_file`."""
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging = holder / target.name
    if create:
        staging.mkdir()
    try:
        yield staging
        if not staging.is_dir():
            raise FileNotFoundError(f"nothing was written for {target}: the saver created no folder")
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(holder, ignore_errors=True)  # the staging folder is gone after a successful replace


def _replace_folder(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing target is renamed aside first and deleted afterwards."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, backup)
    os.replace(staging, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def read_saved_config(source: Path, config_file: str, format_version: int, remedy: str) -> dict:
    """The ``{"config": ..., "state": ...}`` JSON a ``save_pretrained`` folder holds, checked for presence
    and format version (``remedy`` says what to do when the file is missing)."""
    config_path = source / config_file
    if not config_path.is_file():
        raise FileNotFoundError(f"No {config_file} in {source}; {remedy}.")
    saved = json.loads(config_path.read_text())
    found = saved.get("state", {}).get("format_version")
    if found != format_version:
        raise ValueError(f"{source} has format version {found}, expected {format_version}.")
    return saved
