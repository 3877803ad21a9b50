"""Read-time verification of feature-store arrays: sha256 and value scans (finite features and
logits, labels in range), each cached per process and file so an entry is verified once."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_CHUNK_ROWS = 65536  # rows per chunk when scanning a whole array (bounds memory in validate)


@dataclass(frozen=True)
class StoreProblem:
    """One problem found by :func:`validate`: the file (or entry dir), the field, what is wrong."""

    path: Path
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


def _check_values(fpath: Path, name: str, array: np.ndarray, num_classes: int | None) -> list[StoreProblem]:
    problems = []
    for start in range(0, array.shape[0], _CHUNK_ROWS):
        chunk = np.asarray(array[start:start + _CHUNK_ROWS])
        if name in ("features", "logits") or (name == "labels" and num_classes is None):
            if not np.isfinite(chunk).all():
                problems.append(StoreProblem(fpath, name, f"non-finite values near row {start}"))
                break
        elif name == "labels" and chunk.size and (chunk.min() < 0 or chunk.max() >= num_classes):
            problems.append(StoreProblem(fpath, name, f"label out of range [0, {num_classes}) near row {start}"))
            break
    return problems


# sha256 of files already hashed by this process. The key changes whenever the file is replaced
# or rewritten (inode, size, mtime, ctime), so only a change that keeps all of them (bit rot on
# disk after the file was first read here) goes unseen until the next process or validate().
_VERIFIED: dict[tuple, str] = {}


def _file_key(path: Path) -> tuple:
    st = os.stat(path)
    return str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _verified_sha256(path: Path) -> str:
    key = _file_key(path)
    if key not in _VERIFIED:
        if len(_VERIFIED) >= 1 << 16:  # a process reading ever new versions: bound the memory
            _VERIFIED.clear()
        _VERIFIED[key] = _sha256(path)
    return _VERIFIED[key]


# Files whose values this process has scanned (finite features/logits, labels in range), keyed
# as _VERIFIED: an entry a run reads is scanned once, so NaN/Inf written behind the store's back
# (with a matching sha256) is a StoreError on open, never a NaN model.
_VALUES_OK: set[tuple] = set()


def _verified_values(fpath: Path, shown: Path, name: str, array: np.ndarray,
                     num_classes: int | None) -> list[StoreProblem]:
    if name == "sample_ids":  # ids: nothing to scan
        return []
    key = _file_key(fpath)
    if key in _VALUES_OK:
        return []
    problems = _check_values(shown, name, array, num_classes)
    if not problems:
        if len(_VALUES_OK) >= 1 << 16:
            _VALUES_OK.clear()
        _VALUES_OK.add(key)
    return problems


def _trust(path: Path, sha256: str) -> None:
    """Record a file this process just wrote, hashed and value-checked as verified."""
    key = _file_key(path)
    _VERIFIED[key] = sha256
    _VALUES_OK.add(key)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
