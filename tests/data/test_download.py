"""Checksum verification, safe extraction and atomic placement of downloads (offline: file:// URLs)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from tokenrec_pipeline.data import download
from tokenrec_pipeline.data.download import DownloadError, RemoteSource, fetch_public_dataset, safe_extract_zip


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)
    return path


def _serve(monkeypatch, archive: Path, md5: str | None, members=("ml-100k/u.data",)):
    monkeypatch.setitem(download.PUBLIC_SOURCES, "ml-100k",
                        RemoteSource(archive.as_uri(), md5=md5, members=members))


def test_verified_download_is_extracted_flat(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": "1\t2\t3\t4\n"})
    _serve(monkeypatch, archive, hashlib.md5(archive.read_bytes()).hexdigest())
    metadata = fetch_public_dataset("ml-100k", tmp_path / "raw" / "ml-100k")
    assert (tmp_path / "raw" / "ml-100k" / "u.data").read_text() == "1\t2\t3\t4\n"
    assert metadata["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert metadata["md5_verified"]


def test_checksum_mismatch_writes_nothing(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": "1\t2\t3\t4\n"})
    _serve(monkeypatch, archive, "0" * 32)
    target = tmp_path / "raw" / "ml-100k"
    with pytest.raises(DownloadError, match="Checksum mismatch"):
        fetch_public_dataset("ml-100k", target)
    assert list(target.iterdir()) == []


def test_missing_member_is_refused(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "ml-100k.zip", {"ml-100k/other.txt": "x"})
    _serve(monkeypatch, archive, None)
    with pytest.raises(DownloadError, match="expected file"):
        fetch_public_dataset("ml-100k", tmp_path / "raw" / "ml-100k")


@pytest.mark.parametrize("evil", ["../escape.txt", "a/../../escape.txt", "/abs/escape.txt"])
def test_archive_paths_that_escape_are_refused(tmp_path, evil):
    archive = _zip(tmp_path / "evil.zip", {"fine.txt": "ok", evil: "bad"})
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(DownloadError, match="outside"):
        safe_extract_zip(archive, destination)
    assert not (tmp_path / "escape.txt").exists() and list(destination.iterdir()) == []


def test_no_network_error_says_what_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setitem(download.PUBLIC_SOURCES, "ml-100k",
                        RemoteSource((tmp_path / "absent.zip").as_uri(), members=("ml-100k/u.data",)))
    with pytest.raises(DownloadError, match=r"place the files .*u.data"):
        fetch_public_dataset("ml-100k", tmp_path / "raw" / "ml-100k")
