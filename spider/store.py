"""The feature store: precomputed PTM features, labels and source logits, one entry per
(model, dataset, split).

Layout::

    <root>/<model>/<dataset>/<split>/
        features.npy    [N, D] float16 or float32
        labels.npy      [N] int64 class ids, or [N, K] float regression targets
        logits.npy      [N, Cs] source-head logits (optional; LEEP/NCE need them)
        sample_ids.npy  [N] int or str (optional)
        manifest.json   written last: an entry exists iff its directory has one

Arrays are pickle-free ``.npy`` files read memory-mapped, so selecting 500 rows of a 1M-row
entry touches only the pages holding those rows. An entry is written into a hidden temp
directory next to its final place and renamed into place, so a killed writer never leaves an
entry that looks valid; hidden names (``.tmp-*``, ``.old-*``) are never ids and never listed.
Convention: every model's entry of one (dataset, split) lists the same samples in the same order.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spider.errors import StoreError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("features", "labels", "logits", "sample_ids")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_CHUNK_ROWS = 65536  # rows per chunk when scanning a whole array (bounds memory in validate)


def check_id(kind: str, value: Any) -> str:
    """Return ``value`` if it is a valid model/dataset/split id, else raise StoreError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise StoreError(f"{kind}: invalid id {value!r} (expected [A-Za-z0-9][A-Za-z0-9_.+-]*)")
    return value


@dataclass(frozen=True)
class StoreProblem:
    """One problem found by :func:`validate`: the file (or entry dir), the field, what is wrong."""

    path: Path
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.message}"


class StoreEntry:
    """A read-only view of one stored (model, dataset, split), arrays memory-mapped.

    Row arguments are any integer index array (unsorted and repeated rows allowed); every read
    returns an in-memory copy, so callers may modify results freely.
    """

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
        self.path = path
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
        # processes re-open the files instead.
        return _open_entry, (self.path,)

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
        return [s for s in _id_dirs(base) if (base / s / MANIFEST).is_file()]

    def has(self, model: str, dataset: str, split: str = "train") -> bool:
        return (self.path(model, dataset, split) / MANIFEST).is_file()

    def entries(self) -> Iterator[tuple[str, str, str]]:
        """Yield every (model, dataset, split) that has a manifest, sorted."""
        for m in _id_dirs(self.root):
            for d in _id_dirs(self.root / m):
                for s in self.splits(m, d):
                    yield m, d, s

    def entry(self, model: str, dataset: str, split: str = "train") -> StoreEntry:
        """Open an entry; StoreError (one line naming the file) if missing or inconsistent."""
        path = self.path(model, dataset, split)
        if not (path / MANIFEST).is_file():
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
        """
        final = self.path(model, dataset, split)
        arrays, num_classes, class_names = _prepare(features, labels, logits, sample_ids, class_names)
        try:
            info_json = json.loads(json.dumps(info if info is not None else {}))
        except (TypeError, ValueError) as err:
            raise StoreError(f"info: not JSON-serialisable ({err})") from None
        if (final / MANIFEST).is_file() and not overwrite:
            raise StoreError(f"{final}: entry exists (pass overwrite=True to replace it)")
        final.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(final.parent, split)
        tmp = final.parent / f".tmp-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
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
            _move_into_place(tmp, final, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.entry(model, dataset, split)


def _open_entry(path: Path) -> StoreEntry:
    manifest, arrays, problems = _inspect(path)
    if problems:
        raise StoreError(str(problems[0]))
    return StoreEntry(path, manifest, arrays)


def validate(store_or_root: FeatureStore | str | os.PathLike, checksums: bool = True) -> list[StoreProblem]:
    """Check every entry (manifest, shapes, dtypes, finiteness, label range and, if
    ``checksums``, sha256) and return all problems found; an empty list means a clean store."""
    store = store_or_root if isinstance(store_or_root, FeatureStore) else FeatureStore(store_or_root)
    if not store.root.is_dir():
        return [StoreProblem(store.root, "root", "store directory does not exist")]
    problems: list[StoreProblem] = []
    for m in _id_dirs(store.root):
        for d in _id_dirs(store.root / m):
            for s in _id_dirs(store.root / m / d):
                path = store.root / m / d / s
                if not (path / MANIFEST).is_file():
                    problems.append(StoreProblem(path, MANIFEST, "missing (directory is not an entry)"))
                    continue
                problems += _inspect(path, deep=True, checksums=checksums)[2]
    return problems


# ----------------------------------------------------------------------------- reading helpers

def _inspect(path: Path, deep: bool = False, checksums: bool = False):
    """Return (manifest, memory-mapped arrays, problems) for the entry directory ``path``.

    The shallow check (used when opening) reads only the manifest and .npy headers; ``deep``
    also scans the data (finiteness, label range) and ``checksums`` hashes every file.
    """
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, {}, [StoreProblem(mpath, "manifest", f"unreadable JSON ({type(err).__name__}: {err})")]
    problems = _check_manifest(manifest, path)
    if problems:
        return manifest, {}, problems
    arrays: dict[str, np.ndarray] = {}
    for name, spec in manifest["arrays"].items():
        fpath = path / f"{name}.npy"
        try:
            array = np.load(fpath, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            problems.append(StoreProblem(fpath, name, f"cannot read .npy ({type(err).__name__}: {err})"))
            continue
        if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
            problems.append(StoreProblem(fpath, name, f"file holds {array.dtype}{list(array.shape)}, "
                                                      f"manifest says {spec['dtype']}{spec['shape']}"))
            continue
        arrays[name] = array
        if checksums and _sha256(fpath) != spec["sha256"]:
            problems.append(StoreProblem(fpath, name, "sha256 does not match the manifest"))
        if deep:
            problems += _check_values(fpath, name, array, manifest["num_classes"])
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


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished temp dir to ``final``. A directory cannot be renamed over a non-empty
    one, so an existing one is first renamed to a hidden name and removed afterwards."""
    old = None
    if final.exists():
        if not overwrite and (final / MANIFEST).is_file():  # another writer got there first
            raise StoreError(f"{final}: entry exists (pass overwrite=True to replace it)")
        old = final.parent / f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError as err:  # a concurrent writer put an entry there first: keep the old one
        if old is not None and not final.exists():
            os.rename(old, final)
        raise StoreError(f"{final}: could not move the new entry into place ({err})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)


def _clean_leftovers(parent: Path, split: str) -> None:
    """Remove temp dirs of ``split`` left by writers that died (their pid no longer runs).

    Names are ``.tmp-<split>-<pid>-<hex>`` / ``.old-<split>-<pid>-<hex>``; split may contain '-'.
    """
    for p in parent.iterdir():
        head, _, rest = p.name.rpartition("-")[0].rpartition("-")
        if head in (f".tmp-{split}", f".old-{split}") and rest.isdigit() and not _pid_alive(int(rest)):
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. PermissionError: the pid runs under another user
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version() -> str:
    from spider import __version__

    return __version__
