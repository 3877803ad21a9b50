"""The feature store: precomputed PTM features, labels and source logits, one entry per
(model, dataset, split).

Layout::

    <root>/<model>/<dataset>/
        <split> -> .v-<split>-<uuid>   symlink to the entry's current version
        .v-<split>-<uuid>/             one complete, never-modified version of the entry
            features.npy    [N, D] float16 or float32
            labels.npy      [N] int64 class ids, or [N, K] float regression targets
            logits.npy      [N, Cs] source-head logits (optional; LEEP/NCE need them)
            sample_ids.npy  [N] int or str (optional)
            manifest.json   shapes, dtypes and sha256 of the arrays
        .lock-<split>                  flock()ed by writers while they publish a version

so ``<root>/<model>/<dataset>/<split>/features.npy`` reads the current version. A plain
``<split>/`` directory holding the files (stores written before versions existed) is read as is
and replaced by a symlink on its next overwrite.

Arrays are pickle-free ``.npy`` files read memory-mapped, so selecting 500 rows of a 1M-row
entry touches only the pages holding those rows. The first open of a file in a process checks its
sha256 once (cached by path, inode, size, mtime and ctime), so a corrupted array raises StoreError
instead of being scored; the same first open scans its values (finite features and logits, labels
in range), so NaN/Inf written behind the store's back with a matching sha256 is a StoreError too.

Writes and overwrites are atomic for readers and crash-safe: a version is written into a hidden
``.tmp-*`` directory, fsynced, renamed to ``.v-*`` and published by atomically replacing the
symlink (``os.replace``), so a reader or a writer killed at any point sees the old or the new
entry, complete. Concurrent writers of one entry publish one at a time (the lock covers only
publishing, not writing the arrays): with ``overwrite=True`` the last one wins, without it the
later one gets "entry exists". The publisher deletes every unreferenced version (readers that
already opened one keep their memory maps) and the temp dirs of writers that died (pid no longer
running). Hidden names never are ids and are never listed. The one exception to atomicity: on a
filesystem without Linux's ``renameat2(RENAME_EXCHANGE)``, the first overwrite of a plain
pre-version directory briefly has no entry; a writer dying just then is reported by
:func:`validate` and repaired by the next write of that entry.
Convention: every model's entry of one (dataset, split) lists the same samples in the same order.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spider.errors import StoreError
from spider.io import pid_alive
from spider.store_checks import StoreProblem, _check_values, _sha256, _trust, _verified_sha256, _verified_values
from spider.store_versions import (MANIFEST, _fsync_dir, _pointer, _publish, _publish_lock,
                                   _version)

SCHEMA_VERSION = 1
ARRAYS = ("features", "labels", "logits", "sample_ids")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
# Ids are file names; with the hidden prefixes and suffixes added to them they must stay well
# below the usual 255-byte limit of one path component.
MAX_ID_LENGTH = 128
_OPEN_ATTEMPTS = 50  # re-reads of an entry whose version is replaced while being opened


def check_id(kind: str, value: Any) -> str:
    """Return ``value`` if it is a valid model/dataset/split id, else raise StoreError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise StoreError(f"{kind}: invalid id {value!r:.80} (expected [A-Za-z0-9][A-Za-z0-9_.+-]*)")
    if len(value) > MAX_ID_LENGTH:
        raise StoreError(f"{kind}: invalid id {value[:40]!r}... of {len(value)} characters "
                         f"(expected at most {MAX_ID_LENGTH})")
    return value


class StoreEntry:
    """A read-only view of one stored (model, dataset, split), arrays memory-mapped.

    Row arguments are any integer index array (unsorted and repeated rows allowed); every read
    returns an in-memory copy, so callers may modify results freely. ``path`` is the entry's
    ``<root>/<model>/<dataset>/<split>``; ``version`` the name of the version directory it reads
    (None for an entry written before versions existed).
    """

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray],
                 version: str | None = None) -> None:
        self.path = path
        self.version = version
        self.manifest = manifest
        self._arrays = arrays
        self.model, self.dataset, self.split = manifest["model"], manifest["dataset"], manifest["split"]

    @property
    def num_samples(self) -> int:
        return int(self._arrays["features"].shape[0])

    @property
    def dim(self) -> int:
        return int(self._arrays["features"].shape[1])

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None for a regression entry."""
        return self.manifest["num_classes"]

    @property
    def is_regression(self) -> bool:
        return self.manifest["num_classes"] is None

    @property
    def has_logits(self) -> bool:
        return "logits" in self._arrays

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("class_names")

    def _read(self, name: str, rows: Any) -> np.ndarray:
        array = self._arrays[name]
        if rows is None:
            return np.array(array)
        rows = _check_rows(rows, self.num_samples)
        # Reading sorted unique rows keeps the mapped-file access sequential.
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(array[unique])[inverse.reshape(-1)]

    def features(self, rows: Any = None) -> np.ndarray:
        """Features [n, D] (float16 or float32 as stored)."""
        return self._read("features", rows)

    def labels(self, rows: Any = None) -> np.ndarray:
        """Labels: int64 [n] class ids, or float [n, K] regression targets."""
        return self._read("labels", rows)

    def logits(self, rows: Any = None) -> np.ndarray:
        """Source-head logits [n, Cs]; StoreError if the entry has none."""
        if not self.has_logits:
            raise StoreError(f"{self.path}: logits: entry has no source logits")
        return self._read("logits", rows)

    def sample_ids(self, rows: Any = None) -> np.ndarray | None:
        """Sample ids [n], or None if the entry stores none."""
        return self._read("sample_ids", rows) if "sample_ids" in self._arrays else None

    def __reduce__(self):
        # Pickling a memmap would copy the whole array; DataLoader workers and spawned DDP
        # processes re-open the files instead, of the same version, so that no process mixes
        # the data of two writes (StoreError if that version has been overwritten since).
        return _reopen, (self.path, self.version)

    def __repr__(self) -> str:
        return (f"StoreEntry({self.model}/{self.dataset}/{self.split}, N={self.num_samples}, "
                f"D={self.dim}, classes={self.num_classes}, logits={self.has_logits})")


class FeatureStore:
    """A directory of entries. Opening never touches the disk; the first write creates it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, model: str, dataset: str, split: str = "train") -> Path:
        return self.root / check_id("model", model) / check_id("dataset", dataset) / check_id("split", split)

    def models(self) -> list[str]:
        return [m for m in _id_dirs(self.root) if self.datasets(m)]

    def datasets(self, model: str | None = None) -> list[str]:
        models = [check_id("model", model)] if model is not None else _id_dirs(self.root)
        found = {d for m in models for d in _id_dirs(self.root / m) if self.splits(m, d)}
        return sorted(found)

    def splits(self, model: str, dataset: str) -> list[str]:
        base = self.root / check_id("model", model) / check_id("dataset", dataset)
        return [s for s in _id_dirs(base) if _is_entry(base / s)]

    def has(self, model: str, dataset: str, split: str = "train") -> bool:
        return _is_entry(self.path(model, dataset, split))

    def entries(self) -> Iterator[tuple[str, str, str]]:
        """Yield every (model, dataset, split) that has a manifest, sorted."""
        for m in _id_dirs(self.root):
            for d in _id_dirs(self.root / m):
                for s in self.splits(m, d):
                    yield m, d, s

    def entry(self, model: str, dataset: str, split: str = "train") -> StoreEntry:
        """Open an entry; StoreError (one line naming the file) if missing, inconsistent or if an
        array's sha256 differs from the manifest (checked once per file and process)."""
        path = self.path(model, dataset, split)
        if not _is_entry(path):
            if path.is_symlink():
                raise StoreError(f"{path}: store entry points to missing {os.readlink(path)}")
            raise StoreError(f"{path}: no such store entry (model={model}, dataset={dataset}, split={split})")
        return _open_entry(path)

    def write(self, model: str, dataset: str, split: str = "train", *, features: Any, labels: Any,
              logits: Any = None, sample_ids: Any = None, class_names: Sequence[str] | None = None,
              info: dict | None = None, overwrite: bool = False) -> StoreEntry:
        """Validate and atomically write one entry; other entries are never touched.

        ``features`` [N, D] float (float64 is stored as float32), ``labels`` int [N] in
        ``[0, len(class_names))`` (or ``[0, max+1)`` without names) or float [N, K] regression
        targets, ``logits`` [N, Cs] float, ``sample_ids`` [N] int or str, ``info`` any
        JSON-serialisable dict kept in the manifest. An existing entry needs ``overwrite=True``.
        Returns the entry as written (even if a concurrent writer has replaced it since).
        """
        final = self.path(model, dataset, split)
        arrays, num_classes, class_names = _prepare(features, labels, logits, sample_ids, class_names)
        try:
            info_json = json.loads(json.dumps(info if info is not None else {}))
        except (TypeError, ValueError) as err:
            raise StoreError(f"info: not JSON-serialisable ({err})") from None
        tmp = None
        try:
            if not overwrite and _is_entry(final):
                raise StoreError(f"{final}: entry exists (pass overwrite=True to replace it)")
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".tmp-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            specs = {name: _save(tmp / f"{name}.npy", arr) for name, arr in arrays.items()}
            manifest = {
                "schema_version": SCHEMA_VERSION, "model": model, "dataset": dataset, "split": split,
                "num_samples": int(arrays["features"].shape[0]), "num_classes": num_classes,
                "class_names": class_names, "arrays": specs,
                "created": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "spider_version": _version(), "info": info_json},
            }
            _write_manifest(tmp / MANIFEST, manifest)
            _fsync_dir(tmp)
            with _publish_lock(final):
                version = _publish(tmp, final, overwrite)
                tmp = None
                # The checksums were just computed from the files: no need to hash them again.
                for spec in specs.values():  # _prepare checked their values
                    _trust(final.parent / version / spec["file"], spec["sha256"])
                # Opened under the lock, so no other writer can delete this version meanwhile.
                return _open_version(final, version)
        except OSError as err:
            raise StoreError(f"{final}: cannot write the entry ({type(err).__name__}: {err})") from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _open_entry(path: Path) -> StoreEntry:
    manifest, arrays, problems, version = _read(path)
    if problems:
        raise StoreError(str(problems[0]))
    return StoreEntry(path, manifest, arrays, version)


def _open_version(path: Path, version: str) -> StoreEntry:
    """Open one given version of the entry at ``path``, current or not."""
    real = path.parent / version
    manifest, arrays, problems = _inspect(real, path, checksums=True)
    if problems:
        if not real.is_dir():
            raise StoreError(f"{path}: the entry was overwritten after it was opened ({version} is gone); "
                             f"open it again")
        raise StoreError(str(problems[0]))
    return StoreEntry(path, manifest, arrays, version)


def _reopen(path: Path, version: str | None) -> StoreEntry:
    return _open_version(path, version) if version is not None else _open_entry(path)


def validate(store_or_root: FeatureStore | str | os.PathLike, checksums: bool = True) -> list[StoreProblem]:
    """Check every entry (manifest, shapes, dtypes, finiteness, label range and, if
    ``checksums``, sha256) and return all problems found; an empty list means a clean store."""
    store = store_or_root if isinstance(store_or_root, FeatureStore) else FeatureStore(store_or_root)
    if not store.root.is_dir():
        return [StoreProblem(store.root, "root", "store directory does not exist")]
    problems: list[StoreProblem] = []
    for m in _id_dirs(store.root):
        for d in _id_dirs(store.root / m):
            problems += _validate_dataset_dir(store.root / m / d, checksums)
    return problems


def _validate_dataset_dir(base: Path, checksums: bool) -> list[StoreProblem]:
    problems = []
    for s in _id_dirs(base):
        path = base / s
        if not _is_entry(path):
            problems.append(StoreProblem(path, MANIFEST, "missing (directory is not an entry)"))
            continue
        problems += _read(path, deep=True, checksums=checksums)[2]
    for p in sorted(base.iterdir()):
        if _ID.match(p.name) and p.is_symlink() and not p.exists():
            problems.append(StoreProblem(p, "entry", f"points to missing {os.readlink(p)}"))
        displaced = re.fullmatch(r"\.old-(.+)-(\d+)-[0-9a-f]{8}", p.name)
        if (displaced and _ID.match(displaced[1]) and not os.path.lexists(base / displaced[1])
                and not pid_alive(int(displaced[2])) and (p / MANIFEST).is_file()):
            problems.append(StoreProblem(base / displaced[1], "entry", f"missing: a writer died while replacing it; "
                                         f"the old entry waits in {p.name} and the next write restores it"))
    return problems


# ----------------------------------------------------------------------------- reading helpers

def _is_entry(path: Path) -> bool:
    """Whether ``path`` is an entry (has a manifest). A version replaced and deleted while its
    manifest is looked up through the old symlink is no evidence of absence: look again."""
    for _ in range(_OPEN_ATTEMPTS):
        before = _pointer(path)
        if (path / MANIFEST).is_file():
            return True
        if _pointer(path) == before:
            return False
    return False


def _read(path: Path, deep: bool = False, checksums: bool = True):
    """Return (manifest, memory-mapped arrays, problems, version) of the entry at ``path``,
    never mixing two versions: a symlinked version is read through its own directory (a
    version never changes; if it is deleted while being read, the symlink has moved on and the
    read is retried), a plain directory is re-read if it was replaced while being read."""
    for attempt in range(_OPEN_ATTEMPTS):
        before = _pointer(path)
        version = before[1] if before is not None and before[0] == "link" else None
        manifest, arrays, problems = _inspect(path.parent / version if version else path, path,
                                              deep=deep, checksums=checksums)
        if (version is not None and not problems) or _pointer(path) == before:
            return manifest, arrays, problems, version
        time.sleep(min(0.001 * 2 ** attempt, 0.05))
    return None, {}, [StoreProblem(path, "entry", f"replaced {_OPEN_ATTEMPTS} times while being opened; "
                                                  f"are writers overwriting it in a loop?")], None


def _inspect(path: Path, shown: Path, deep: bool = False, checksums: bool = False):
    """Return (manifest, memory-mapped arrays, problems) for the entry files in directory
    ``path``; problems name the files under ``shown`` (the entry's path in the store).

    The shallow check (used when opening) reads the manifest and .npy headers and, if
    ``checksums``, compares each file's sha256 (computed once per process and file) with the
    manifest; ``deep`` also scans the data (finiteness, label range) and always re-hashes.
    """
    mpath = shown / MANIFEST
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, {}, [StoreProblem(mpath, "manifest", f"unreadable JSON ({type(err).__name__}: {err})")]
    problems = _check_manifest(manifest, shown)
    if problems:
        return manifest, {}, problems
    arrays: dict[str, np.ndarray] = {}
    for name, spec in manifest["arrays"].items():
        fpath, shown_file = path / f"{name}.npy", shown / f"{name}.npy"
        try:
            array = np.load(fpath, mmap_mode="r", allow_pickle=False)
            if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
                problems.append(StoreProblem(shown_file, name, f"file holds {array.dtype}{list(array.shape)}, "
                                                               f"manifest says {spec['dtype']}{spec['shape']}"))
                continue
            if checksums and (_sha256(fpath) if deep else _verified_sha256(fpath)) != spec["sha256"]:
                problems.append(StoreProblem(shown_file, name, "sha256 does not match the manifest"))
        except (OSError, ValueError, EOFError) as err:
            problems.append(StoreProblem(shown_file, name, f"cannot read .npy ({type(err).__name__}: {err})"))
            continue
        arrays[name] = array
        try:  # a version deleted by a writer's clean-up while being scanned: a problem, so _read retries
            if deep:
                problems += _check_values(shown_file, name, array, manifest["num_classes"])
            elif checksums:  # opening: values scanned once per process and file, as the checksum
                problems += _verified_values(fpath, shown_file, name, array, manifest["num_classes"])
        except OSError as err:
            problems.append(StoreProblem(shown_file, name, f"cannot read .npy ({type(err).__name__}: {err})"))
    return manifest, arrays, problems


def _check_manifest(m: Any, path: Path) -> list[StoreProblem]:
    mpath = path / MANIFEST
    if not isinstance(m, dict):
        return [StoreProblem(mpath, "manifest", "expected a JSON object")]
    if m.get("schema_version") != SCHEMA_VERSION:
        return [StoreProblem(mpath, "schema_version", f"expected {SCHEMA_VERSION}, got {m.get('schema_version')!r}")]
    problems = []
    for key, expected in zip(("split", "dataset", "model"), (path.name, path.parent.name, path.parent.parent.name)):
        if m.get(key) != expected:
            problems.append(StoreProblem(mpath, key, f"manifest says {m.get(key)!r}, directory says {expected!r}"))
    specs = m.get("arrays")
    if not isinstance(specs, dict) or not {"features", "labels"} <= specs.keys() or not specs.keys() <= set(ARRAYS):
        return problems + [StoreProblem(mpath, "arrays", f"expected features, labels and optionally logits, "
                                                         f"sample_ids; got {specs!r:.80}")]
    for name, spec in specs.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("shape"), list) and isinstance(spec.get("dtype"), str)
                and isinstance(spec.get("sha256"), str)):
            problems.append(StoreProblem(mpath, f"arrays.{name}", "expected {shape: list, dtype: str, sha256: str}"))
    n = m.get("num_samples")
    if not problems and any(spec["shape"][:1] != [n] for spec in specs.values()):
        problems.append(StoreProblem(mpath, "num_samples", f"{n!r} disagrees with the array shapes"))
    nc = m.get("num_classes")
    if not (nc is None or (isinstance(nc, int) and nc >= 1)):
        problems.append(StoreProblem(mpath, "num_classes", f"expected a positive int or null, got {nc!r}"))
    return problems


def _check_rows(rows: Any, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.dtype.kind not in "iu" and rows.size):
        raise StoreError(f"rows: expected a 1-D integer index array, got {rows.dtype}{list(rows.shape)}")
    rows = rows.astype(np.int64, copy=False)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise StoreError(f"rows: indices must lie in [0, {n}), got range [{rows.min()}, {rows.max()}]")
    return rows


def _id_dirs(path: Path) -> list[str]:
    """Sorted names of sub-directories that are valid ids (hidden temp dirs never are)."""
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir() and _ID.match(p.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


# ----------------------------------------------------------------------------- writing helpers

def _prepare(features, labels, logits, sample_ids, class_names):
    """Validate writer inputs; return (arrays to save, num_classes or None, class_names)."""
    x = _numpy(features, "features")
    if x.ndim != 2 or x.dtype.kind != "f" or x.shape[0] < 1 or x.shape[1] < 1:
        raise StoreError(f"features: expected a non-empty 2-D float array [N, D], got {x.dtype}{list(x.shape)}")
    with np.errstate(over="ignore"):  # overflow becomes Inf, rejected just below
        x = x if x.dtype in (np.float16, np.float32) else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise StoreError("features: contains NaN or Inf (after conversion to the stored dtype)")
    n = x.shape[0]
    y = _numpy(labels, "labels")
    if y.shape[:1] != (n,):
        raise StoreError(f"labels: expected {n} rows like features, got shape {list(y.shape)}")
    if y.ndim == 1 and y.dtype.kind in "iu":
        y = y.astype(np.int64)
        num_classes = len(class_names) if class_names is not None else int(y.max()) + 1
        if y.min() < 0 or y.max() >= num_classes:
            raise StoreError(f"labels: class ids must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    elif y.ndim == 2 and y.dtype.kind == "f":
        y = y if y.dtype in (np.float32, np.float64) else y.astype(np.float32)
        if not np.isfinite(y).all():
            raise StoreError("labels: regression targets contain NaN or Inf")
        num_classes = None
    else:
        raise StoreError(f"labels: expected int [N] class ids or float [N, K] targets, got {y.dtype}{list(y.shape)}")
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
            raise StoreError("class_names: expected a sequence of str")
        class_names = list(class_names)
        if num_classes is None and len(class_names) != y.shape[1]:
            raise StoreError(f"class_names: regression entry has {y.shape[1]} targets, got {len(class_names)} names")
    arrays = {"features": x, "labels": y}
    if logits is not None:
        z = _numpy(logits, "logits")
        if z.ndim != 2 or z.dtype.kind != "f" or z.shape[0] != n or z.shape[1] < 1:
            raise StoreError(f"logits: expected a float array [{n}, Cs], got {z.dtype}{list(z.shape)}")
        with np.errstate(over="ignore"):
            z = z if z.dtype in (np.float16, np.float32) else z.astype(np.float32)
        if not np.isfinite(z).all():
            raise StoreError("logits: contains NaN or Inf (after conversion to the stored dtype)")
        arrays["logits"] = z
    if sample_ids is not None:
        ids = _numpy(sample_ids, "sample_ids")
        if ids.dtype == object:
            ids = ids.astype(str) if all(isinstance(i, str) for i in ids.ravel()) else ids
        if ids.shape != (n,) or ids.dtype.kind not in "iuU":
            raise StoreError(f"sample_ids: expected int or str [{n}], got {ids.dtype}{list(ids.shape)}")
        arrays["sample_ids"] = ids
    return arrays, num_classes, class_names


def _numpy(value: Any, field: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, possibly on an accelerator
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise StoreError(f"{field}: cannot convert to an array ({err})") from None


def _save(path: Path, array: np.ndarray) -> dict:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "shape": list(array.shape), "dtype": str(array.dtype), "sha256": _sha256(path)}


def _write_manifest(path: Path, manifest: dict) -> None:
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
