"""Checksum-verified downloads and safe archive extraction for public datasets.

Real datasets may not be redistributed, so the project fetches them from their publishers.
Where a publisher gives a checksum (GroupLens publishes MD5s for MovieLens) it is verified. A
SHA-256 is verified when one is pinned in :data:`PUBLIC_SOURCES` or given by the parameter
``ingestion.download_sha256`` (which overrides the pinned one). HetRec Last.fm and the Amazon files
publish no checksum and the original archives were not available where this project was tested,
so no SHA-256 is pinned for them (we never invent one): their download is checked for the expected
members and row counts, its SHA-256 is logged and recorded in ``ingestion_metadata.json``, and a
user pins it for later runs with ``--params=ingestion.download_sha256=<sha256>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed, was corrupt, or the archive was unsafe."""


@dataclass(frozen=True)
class RemoteSource:
    """Where a public dataset comes from and how to check what arrives.

    Attributes:
        url: the publisher's URL.
        md5: checksum published by the publisher, or None when none is published.
        sha256: SHA-256 of the file this project was tested with, or None when none was available.
        members: files (paths inside the archive, or the file name for a plain file) that must
            exist after download; they are moved flat into the dataset folder.
        min_rows: minimum line count per member, a sanity check where no checksum exists.
    """

    url: str
    md5: str | None = None
    sha256: str | None = None
    members: tuple[str, ...] = ()
    min_rows: dict[str, int] = field(default_factory=dict)

    @property
    def is_zip(self) -> bool:
        return self.url.endswith(".zip")


PUBLIC_SOURCES: dict[str, RemoteSource] = {
    "ml-100k": RemoteSource(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        members=("ml-100k/u.data",),
    ),
    "ml-1m": RemoteSource(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        members=("ml-1m/ratings.dat",),
    ),
    # HetRec 2011 publishes no checksum: check members and the row count of its README.
    "lastfm": RemoteSource(
        "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        members=("user_artists.dat", "user_taggedartists-timestamps.dat"),
        min_rows={"user_artists.dat": 92_834},
    ),
    # The 2014 Amazon ratings-only files (McAuley et al.) publish no checksum either.
    "beauty": RemoteSource(
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Beauty.csv",
        members=("ratings_Beauty.csv",),
        min_rows={"ratings_Beauty.csv": 1_000_000},
    ),
    "clothing": RemoteSource(
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
        "ratings_Clothing_Shoes_and_Jewelry.csv",
        members=("ratings_Clothing_Shoes_and_Jewelry.csv",),
        min_rows={"ratings_Clothing_Shoes_and_Jewelry.csv": 1_000_000},
    ),
}


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, streamed in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_extract_zip(archive: Path, destination: Path) -> list[Path]:
    """Extract ``archive`` under ``destination``, refusing any member that would escape it.

    Absolute paths, ``..`` components and symbolic links are refused before anything is written.
    """
    destination = destination.resolve()
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            target = (destination / info.filename).resolve()
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if is_link or not target.is_relative_to(destination) or Path(info.filename).is_absolute():
                raise DownloadError(
                    f"Refusing to extract {archive.name}: member {info.filename!r} would be "
                    f"written outside {destination} (or is a link)."
                )
        bundle.extractall(destination)
        return [destination / name for name in bundle.namelist()]


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def _verify_sha256(download: Path, url: str, actual: str, expected: str | None, folder: Path) -> None:
    """Refuse a download whose SHA-256 differs from the expected one (pinned or ``ingestion.download_sha256``)."""
    if expected is None:
        logger.warning("No SHA-256 is pinned for %s (%s): downloaded sha256=%s. Pin it for later runs with "
                       "--params=ingestion.download_sha256=%s", download.name, url, actual, actual)
        return
    if actual != expected.strip().lower():
        raise DownloadError(
            f"Checksum mismatch for {download.name} from {url}: SHA-256 {actual}, expected {expected} (pinned, or "
            f"the parameter ingestion.download_sha256). The file is corrupt or the publisher changed it; nothing "
            f"was written to {folder}. Retry, place a verified copy there, or set ingestion.download_sha256 to "
            "the new file's SHA-256 once you trust it."
        )


def fetch_public_dataset(name: str, folder: Path, timeout: float = 60.0, sha256: str | None = None) -> dict:
    """Download dataset ``name`` into ``folder`` (created), verify it and return metadata.

    ``sha256`` (the parameter ``ingestion.download_sha256``) replaces the pinned SHA-256 of the source.

    The archive is downloaded and checked in a temporary directory next to ``folder`` and the
    members are moved in only after every check passed, so ``folder`` never holds a partial file.

    Returns:
        Metadata for the run record: url, sha256 of the download, the verified md5 (if any),
        and the members placed.
    """
    if name not in PUBLIC_SOURCES:
        raise DownloadError(f"No public download is known for dataset {name!r}.")
    source = PUBLIC_SOURCES[name]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-download-") as tmp:
        tmp_dir = Path(tmp)
        download = tmp_dir / Path(source.url).name
        logger.info("Downloading %s from %s", name, source.url)
        try:
            with urllib.request.urlopen(source.url, timeout=timeout) as response, open(
                download, "wb"
            ) as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise DownloadError(
                f"Could not download {name} from {source.url} ({error}). Without network, place "
                f"the files {list(source.members)} (flat) into {folder}/ and run again."
            ) from error

        sha256_actual = file_digest(download, "sha256")
        expected_sha256 = sha256 or source.sha256
        _verify_sha256(download, source.url, sha256_actual, expected_sha256, folder)
        metadata = {"dataset": name, "url": source.url, "sha256": sha256_actual,
                    "sha256_verified": expected_sha256 is not None, "md5_verified": None}
        if source.md5 is not None:
            md5 = file_digest(download, "md5")
            if md5 != source.md5:
                raise DownloadError(
                    f"Checksum mismatch for {download.name} from {source.url}: MD5 {md5}, "
                    f"publisher says {source.md5}. The file is corrupt or changed; nothing was "
                    f"written to {folder}. Retry, or place a verified copy there."
                )
            metadata["md5_verified"] = md5

        extracted = tmp_dir / "extracted"
        extracted.mkdir()
        if source.is_zip:
            safe_extract_zip(download, extracted)
        else:
            shutil.move(str(download), extracted / download.name)

        placed = []
        for member in source.members:
            path = extracted / member
            if not path.is_file():
                raise DownloadError(
                    f"{source.url} does not contain the expected file {member!r}; nothing was "
                    f"written to {folder}."
                )
            minimum = source.min_rows.get(member)
            if minimum is not None and (rows := _count_lines(path)) < minimum:
                raise DownloadError(
                    f"{member} from {source.url} has {rows} lines, expected at least {minimum}; "
                    f"nothing was written to {folder}."
                )
            placed.append(path)
        for path in placed:
            os.replace(path, folder / path.name)
        metadata["files"] = [p.name for p in placed]
        logger.info("Downloaded %s: sha256=%s, files=%s", name, sha256_actual, metadata["files"])
        return metadata
