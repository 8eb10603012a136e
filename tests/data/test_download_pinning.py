"""SHA-256 pinning of downloads: the pinned hash, the ``ingestion.download_sha256`` override, https."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import pytest

from tokenrec_pipeline.data import download
from tokenrec_pipeline.data.download import (
    PUBLIC_SOURCES,
    DownloadError,
    RemoteSource,
    fetch_public_dataset,
)
from tokenrec_pipeline.data.sources import DataSourceError, read_dataset


def _archive(tmp_path: Path) -> Path:
    path = tmp_path / "hetrec2011-lastfm-2k.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n")
    return path


def _serve(monkeypatch, archive: Path, sha256: str | None) -> None:
    monkeypatch.setitem(download.PUBLIC_SOURCES, "lastfm",
                        RemoteSource(archive.as_uri(), sha256=sha256, members=("user_artists.dat",)))


def test_pinned_sha256_mismatch_writes_nothing_and_names_the_parameter(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    _serve(monkeypatch, archive, "ab" * 32)
    target = tmp_path / "raw" / "lastfm"
    with pytest.raises(DownloadError) as error:
        fetch_public_dataset("lastfm", target)
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert f"Checksum mismatch for {archive.name}" in str(error.value)
    assert f"SHA-256 {actual}, expected {'ab' * 32}" in str(error.value)
    assert "ingestion.download_sha256" in str(error.value)
    assert list(target.iterdir()) == []


def test_parameter_overrides_the_pinned_sha256(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    _serve(monkeypatch, archive, "ab" * 32)
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    frame, metadata = read_dataset("lastfm", tmp_path / "raw", {"download_sha256": actual.upper()})
    assert len(frame) == 2
    assert metadata["download"]["sha256"] == actual and metadata["download"]["sha256_verified"] is True


def test_wrong_parameter_sha256_is_refused_through_ingestion(tmp_path, monkeypatch):
    _serve(monkeypatch, _archive(tmp_path), None)
    with pytest.raises(DataSourceError, match="Checksum mismatch"):
        read_dataset("lastfm", tmp_path / "raw", {"download_sha256": "0" * 64})
    assert not (tmp_path / "raw" / "lastfm" / "user_artists.dat").exists()


def test_unpinned_download_logs_its_sha256_to_pin(tmp_path, monkeypatch, caplog):
    archive = _archive(tmp_path)
    _serve(monkeypatch, archive, None)
    with caplog.at_level(logging.WARNING):
        metadata = fetch_public_dataset("lastfm", tmp_path / "raw" / "lastfm")
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert metadata["sha256_verified"] is False
    assert f"--params=ingestion.download_sha256={actual}" in caplog.text


def test_every_public_source_uses_https():
    assert [name for name, source in PUBLIC_SOURCES.items() if not source.url.startswith("https://")] == []
