"""Locate and verify files of the shared data folder against the sha256 list in ``MANIFEST.md``.

Every real dataset or weight file is opened through :func:`data_file`, which says exactly which
file is expected where when it is missing, and refuses a file whose sha256 differs from the
manifest (a truncated download or a different release would silently change results).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from spider import paths
from spider.errors import SpiderError

MANIFEST_NAME = "MANIFEST.md"
_SHA_LINE = re.compile(r"^([0-9a-f]{64})\s+(\S+)\s*$")


class DataFileError(SpiderError):
    """A file of the shared data folder is missing, unlisted or has the wrong checksum."""


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` if given, else :func:`spider.paths.data_dir` (``SPIDER_DATA_DIR``)."""
    return Path(data_dir) if data_dir is not None else paths.data_dir()


def manifest_checksums(data_dir: str | Path | None = None) -> dict[str, str]:
    """``{relative path: sha256 hex}`` parsed from ``<data_dir>/MANIFEST.md``."""
    manifest = resolve_data_dir(data_dir) / MANIFEST_NAME
    if not manifest.is_file():
        raise DataFileError(
            f"{manifest} not found: set SPIDER_DATA_DIR to the shared data folder holding "
            f"{MANIFEST_NAME} and its datasets/ and weights/"
        )
    return _parse_checksums(str(manifest), manifest.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _parse_checksums(manifest: str, _mtime_ns: int) -> dict[str, str]:
    sums = {}
    for line in Path(manifest).read_text(encoding="utf-8").splitlines():
        match = _SHA_LINE.match(line.strip())
        if match:
            sums[match.group(2)] = match.group(1)
    return sums


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file(relative: str, data_dir: str | Path | None = None, *, verify: bool = True) -> Path:
    """Absolute path of ``relative`` (e.g. ``"weights/digit_cnn/mnist.pth"``) in the data folder.

    Raises:
        DataFileError: the file is missing, or ``verify`` and its sha256 is not the one listed in
            ``MANIFEST.md`` (or it is not listed there).
    """
    root = resolve_data_dir(data_dir)
    path = root / relative
    if not path.is_file():
        raise DataFileError(
            f"missing data file {relative!r}: expected at {path} (set SPIDER_DATA_DIR); "
            f"{MANIFEST_NAME} of the shared data folder describes its source"
        )
    if verify:
        expected = manifest_checksums(root).get(relative)
        if expected is None:
            raise DataFileError(f"{relative!r} has no sha256 line in {root / MANIFEST_NAME}")
        actual = sha256_of(path)
        if actual != expected:
            raise DataFileError(
                f"sha256 mismatch for {path}: got {actual[:12]}..., {MANIFEST_NAME} lists "
                f"{expected[:12]}... (corrupted or different file)"
            )
    return path
