"""The label cache: transferability labels of a fixed bank of training tasks, built once.

Why a fixed bank: a label costs one run of every configured baseline (LogME, LEEP, NCE, H-Score)
per PTM per task, far more than a training step. So the cache labels ``num_tasks`` tasks - task
``i`` is :meth:`TaskSampler.task` ``(0, i)`` - and training epochs draw (reshuffled, deterministic
by seed and epoch) from this bank. Growing ``num_tasks`` later extends the cache: the first tasks
are the same, so their shards are reused.

Layout of a cache folder::

    labels.json            manifest: settings, their hash, models, baselines (written first)
    shard-00000.npz        tasks [0, S): specs, raw scores, aggregate scores, ranking
    shard-00001.npz        tasks [S, 2S) ...
    targets/<dataset>-<hash>.npz   baseline scores of validation/test targets

A shard (``np.savez_compressed``, no pickles) holds ``config_hash`` (str), ``task_index`` int64
[n], ``specs`` uint8 [bytes] (UTF-8, one :meth:`TaskSpec.to_json` per line), ``raw`` float64
[n, K, M] (baseline k on model m, NaN where it failed), ``scores`` float64 [n, M] (aggregate,
higher = better, NaN = unscored) and ``ranking`` int64 [n, M] (model indices best first).

Robustness: shards are written to a temp file and renamed into place, so a killed build leaves
only complete shards (and maybe a stale temp file, removed on the next run). A new build reuses
every valid shard and computes only the missing ones; each task's numbers depend only on its spec
and the store (baselines run single-threaded), so a resumed build equals an uninterrupted one.
The manifest records a hash of every setting that changes labels - including checksums of the
stored features read - and a build or read with different settings stops with an error naming them.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import socket
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spider.datamodules.tasks import ClassIndex, TaskConfig, TaskSampler, TaskSpec, check_disjoint
from spider.errors import ConfigError, SpiderError, StoreError

__all__ = [
    "DEFAULT_BASELINES",
    "BuildReport",
    "LabelCache",
    "LabelCacheError",
    "LabelConfig",
    "build_label_cache",
    "open_label_cache",
    "resolve_label_config",
    "score_task",
    "target_baseline_scores",
]

DEFAULT_BASELINES = ("logme", "leep", "nce", "hscore")
MANIFEST = "labels.json"
FORMAT = "spider-label-cache"
FORMAT_VERSION = 1
_SHARD_KEYS = ("config_hash", "task_index", "specs", "raw", "scores", "ranking")


class LabelCacheError(SpiderError):
    """A label cache is incomplete, corrupted or was built with other settings."""


@dataclass(frozen=True)
class LabelConfig:
    """Every setting that determines the labels of the task bank (resolved, no defaults left)."""

    store: str
    general_encoder: str
    models: tuple[str, ...]
    pool: tuple[str, ...]
    split: str = "train"
    task: TaskConfig = field(default_factory=TaskConfig)
    seed: int = 0
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    aggregator: str = "copeland"
    shard_size: int = 64

    def identity(self, fingerprint: dict[str, str]) -> dict[str, Any]:
        """What the cache hash covers: settings plus store checksums (not the store's path)."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "general_encoder": self.general_encoder,
                "models": list(self.models), "pool": list(self.pool), "split": self.split,
                "task": self.task.to_dict(), "seed": self.seed, "baselines": list(self.baselines),
                "aggregator": self.aggregator, "shard_size": self.shard_size, "store": fingerprint}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _open_store(store: Any):
    from spider.store import FeatureStore

    return store if isinstance(store, FeatureStore) else FeatureStore(store)


def resolve_label_config(store: Any, *, general_encoder: str = "general", models: Sequence[str] | None = None,
                         pool: Sequence[str] | None = None, targets: Iterable[str] = (), split: str = "train",
                         task: TaskConfig | None = None, seed: int = 0,
                         baselines: Sequence[str] = DEFAULT_BASELINES, aggregator: str = "copeland",
                         shard_size: int = 64) -> LabelConfig:
    """Fill defaults and check the settings against the store.

    ``models`` defaults to every stored model except the general encoder; ``pool`` to every
    dataset of the general encoder at ``split`` that is not in ``targets``.
    """
    from spider.aggregate import get_aggregator
    from spider.baselines import get_baseline

    store = _open_store(store)
    targets = list(targets)
    known_models, known_datasets = store.models(), store.datasets()
    _check_known("general", [general_encoder], known_models, "model", store)
    if models is None:
        models = [m for m in known_models if m != general_encoder]
    models = list(models)
    if not models:
        raise ConfigError(f"models: no PTMs to rank in the store at {store.root}")
    _check_known("models", models, known_models, "model", store)
    if len(set(models)) != len(models):
        raise ConfigError(f"models: duplicate ids in {models}")
    if general_encoder in models:
        raise ConfigError(f"models: the general encoder {general_encoder!r} cannot also be a ranked PTM")
    # A misspelt target would silently stay in the default pool (labels computed on it): refuse it.
    _check_known("targets", targets, known_datasets, "dataset", store)
    if pool is None:
        pool = [d for d in store.datasets(general_encoder) if d not in targets and store.has(general_encoder, d, split)]
    pool = sorted(pool)
    _check_known("pool_datasets", pool, known_datasets, "dataset", store)
    if len(set(pool)) != len(pool):
        raise ConfigError(f"pool_datasets: duplicate ids in {pool}")
    check_disjoint(pool, targets)
    lacking = [d for d in pool if not store.has(general_encoder, d, split)]
    if lacking:
        raise ConfigError(f"pool_datasets: no {general_encoder}/{lacking[0]}/{split} entry in the store at "
                          f"{store.root} (pool datasets need the general encoder's features at split {split!r})")
    if not pool:
        raise ConfigError(f"pool_datasets: no pool datasets left at split {split!r} in {store.root}")
    for name in baselines:
        get_baseline(name)
    if not baselines:
        raise ConfigError("baselines: at least one baseline is needed to label tasks")
    get_aggregator(aggregator)
    if shard_size < 1:
        raise ConfigError(f"shard_size: expected >= 1, got {shard_size}")
    return LabelConfig(store=str(store.root), general_encoder=general_encoder, models=tuple(models),
                       pool=tuple(pool), split=split, task=task or TaskConfig(), seed=int(seed),
                       baselines=tuple(baselines), aggregator=aggregator, shard_size=int(shard_size))


def _check_known(key: str, names: Sequence[str], known: Sequence[str], kind: str, store: Any) -> None:
    """ConfigError naming every name of ``names`` that is not a ``kind`` of the store, and the known ones."""
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(known) or "none"
        raise ConfigError(f"{key}: unknown {kind}{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(map(repr, unknown))} ({kind}s in the store at {store.root}: {listed})")


def store_fingerprint(store: Any, models: Iterable[str], datasets: Iterable[str], split: str) -> dict[str, str]:
    """``{"model/dataset/split": checksum}`` of the entries read, checking they line up row by row.

    The checksum combines the entry's recorded array checksums (cheap: read from its manifest).
    """
    store = _open_store(store)
    models, datasets = list(models), list(datasets)
    out: dict[str, str] = {}
    for dataset in datasets:
        sizes = {}
        for model in models:
            if not store.has(model, dataset, split):
                raise StoreError(f"store {store.root}: model {model!r} has no entry for {dataset}/{split}")
            entry = store.entry(model, dataset, split)
            sizes[model] = entry.num_samples
            arrays = entry.manifest.get("arrays", {})
            sums = {k: v.get("sha256") for k, v in sorted(arrays.items()) if isinstance(v, dict)}
            out[f"{model}/{dataset}/{split}"] = _hash(sums if any(sums.values()) else
                                                      {"n": entry.num_samples, "dim": entry.dim})
        if len(set(sizes.values())) > 1:
            raise StoreError(f"store {store.root}: {dataset}/{split} has different sample counts per model "
                             f"({sizes}); all models must list the same samples")
    return out


# ----------------------------------------------------------------------------------------- scoring


def _needs_logits(baselines: Sequence[str]) -> bool:
    from spider.baselines import get_baseline

    return any("source_logits" in get_baseline(b).needs for b in baselines)


def task_entries(store: Any, model: str, spec: TaskSpec, split: str | None = None):
    """The store entries a task reads under ``model``, as ``{dataset: StoreEntry}``."""
    split = split or spec.split
    return {d: store.entry(model, d, split) for d in spec.datasets}


def task_array(store: Any, model: str, spec: TaskSpec, name: str = "features") -> np.ndarray:
    """``features`` [N, D] (or ``logits`` [N, Cs]) of a task's samples under ``model``, task order."""
    entries = task_entries(store, model, spec)
    groups = spec.row_groups()
    first = getattr(entries[groups[0][0]], name)(groups[0][1][:1])
    out = np.empty((spec.num_samples, *first.shape[1:]), dtype=first.dtype)
    for dataset, rows, pos in groups:
        out[pos] = getattr(entries[dataset], name)(rows)
    return out


def score_task(store: Any, spec: TaskSpec | None, models: Sequence[str], baselines: Sequence[str], *,
               dataset: str | None = None, split: str = "train", device: str | None = None
               ) -> tuple[np.ndarray, list[str]]:
    """Every baseline on every model for one task.

    Args:
        spec: the task; None scores the whole entry ``dataset``/``split`` (a target dataset).
        device: where the baselines compute (default CPU; e.g. ``"cuda"``).

    Returns:
        ``(raw [K, M] float64, warnings)``: NaN where a baseline failed; the warning texts raised.
    """
    from spider.baselines import score_models

    store = _open_store(store)
    needs_logits = _needs_logits(baselines)
    if spec is None:
        labels = _contiguous(store.entry(models[0], dataset, split).labels())
    else:
        labels = spec.labels()
    raw = np.full((len(baselines), len(models)), np.nan)
    caught: list[str] = []
    for m, model in enumerate(models):
        if spec is None:
            entry = store.entry(model, dataset, split)
            inputs = {"features": entry.features()}
            if needs_logits and entry.has_logits:
                inputs["source_logits"] = entry.logits()
        else:
            inputs = {"features": task_array(store, model, spec, "features")}
            if needs_logits and all(e.has_logits for e in task_entries(store, model, spec).values()):
                inputs["source_logits"] = task_array(store, model, spec, "logits")
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            scores = score_models(labels, {model: inputs}, list(baselines), device=device)
        raw[:, m] = np.asarray(scores, dtype=np.float64)[:, 0]
        caught += [str(w.message) for w in record]
    return raw, caught


def _contiguous(labels: np.ndarray) -> np.ndarray:
    """Class ids remapped to 0..C-1 (classes without samples dropped)."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


# --------------------------------------------------------------------------------- worker pool

_WORKER: dict[str, Any] = {}


def _init_worker(store_root: str, device: str | None) -> None:
    import torch

    from spider._procs import exit_with_parent

    exit_with_parent()
    torch.set_num_threads(1)
    _WORKER["store"] = _open_store(store_root)
    _WORKER["device"] = device


def _work(item: tuple) -> tuple[Any, np.ndarray, list[str]]:
    key, spec_json, dataset, split, models, baselines = item
    spec = TaskSpec.from_json(spec_json) if spec_json is not None else None
    raw, caught = score_task(_WORKER["store"], spec, models, baselines, dataset=dataset, split=split,
                             device=_WORKER["device"])
    return key, raw, caught


_HOST = socket.gethostname().replace("-", "_") or "host"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _single_threaded_env() -> Iterator[None]:
    """Spawned workers inherit these: their BLAS runs single-threaded like the in-process path."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(items: list[tuple], store_root: str, workers: int,
         device: str | None = None) -> Iterator[tuple[Any, np.ndarray, list[str]]]:
    """Score ``items`` in order, in-process (workers <= 1) or in ``workers`` spawned processes."""
    import torch

    if workers <= 1 or len(items) <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same numerics as the worker processes
        try:
            store = _open_store(store_root)
            for key, spec_json, dataset, split, models, baselines in items:
                spec = TaskSpec.from_json(spec_json) if spec_json is not None else None
                raw, caught = score_task(store, spec, models, baselines, dataset=dataset, split=split,
                                         device=device)
                yield key, raw, caught
        finally:
            torch.set_num_threads(threads)
        return
    # Spawned, not forked: forking after torch/BLAS started their threads can deadlock. An executor,
    # not a Pool: a worker that dies (e.g. a script without a __main__ guard) raises instead of hanging.
    context = multiprocessing.get_context("spawn")
    with _single_threaded_env():  # the executor starts its processes on demand, so for the whole run
        executor = ProcessPoolExecutor(min(workers, len(items)), mp_context=context, initializer=_init_worker,
                                       initargs=(store_root, device))
        try:
            yield from executor.map(_work, items)
        except BrokenProcessPool as err:
            raise SpiderError(f"label workers died ({err}); a script starting workers needs an "
                              "`if __name__ == '__main__':` guard (or use workers=1)") from None
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------- the cache


@dataclass
class LabelCache:
    """The labelled task bank, as read from a cache folder (first ``num_tasks`` tasks)."""

    root: Path
    config_hash: str
    models: list[str]
    baselines: list[str]
    aggregator: str
    spec_texts: list[str]  # TaskSpec JSON per task: compact (a paper-size task has 5000 rows)
    raw: np.ndarray  # [N, K, M] float64
    scores: np.ndarray  # [N, M] float64, NaN = unscored
    ranking: np.ndarray  # [N, M] int64
    identity: dict[str, Any] = field(default_factory=dict)  # the manifest's settings (pool, split, ...)

    @property
    def num_tasks(self) -> int:
        return len(self.spec_texts)

    @property
    def specs(self) -> list[TaskSpec]:
        """Every task (decoded; prefer :meth:`spec` for one)."""
        return [TaskSpec.from_json(t) for t in self.spec_texts]

    def spec(self, i: int) -> TaskSpec:
        return TaskSpec.from_json(self.spec_texts[i])

    @property
    def mask(self) -> np.ndarray:
        """[N, M] bool: True where the model has a label (an aggregate score) for the task."""
        return np.isfinite(self.scores)


@dataclass(frozen=True)
class BuildReport:
    """What a build did: tasks computed and reused, wall time, failed baseline scores."""

    num_tasks: int
    computed: int
    reused: int
    seconds: float
    failed_scores: int
    first_warning: str | None = None

    @property
    def tasks_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else math.nan


def _shard_path(root: Path, k: int) -> Path:
    return root / f"shard-{k:05d}.npz"


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, lambda f: f.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode()))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_temp_files(root: Path) -> None:
    """Remove temp files left by killed builds on this host (never those of a live builder).

    Temp files of other hosts (a cache on a shared file system) are left alone: their builder may
    be alive, and a stale one is a hidden file that no reader looks at.
    """
    for tmp in root.glob(".*.tmp-*"):
        host, _, pid = tmp.name.split(".tmp-", 1)[1].rpartition("-")
        if host and host != _HOST:
            continue
        if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


# manifest key -> check of its value (what readers index without further checks)
_MANIFEST_FIELDS: dict[str, Any] = {
    "config_hash": lambda v: isinstance(v, str),
    "identity": lambda v: isinstance(v, dict) and isinstance(v.get("pool"), list),
    "models": lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
    "baselines": lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
    "aggregator": lambda v: isinstance(v, str),
    "shard_size": lambda v: type(v) is int and v >= 1,
    "num_tasks": lambda v: type(v) is int and v >= 0,
    "complete_tasks": lambda v: type(v) is int and v >= 0,
}


def _read_manifest(root: Path) -> dict | None:
    """The checked manifest of the cache at ``root``; None if there is none."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError(f"expected a JSON object, got {type(manifest).__name__}")
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, expected {FORMAT!r}")
        for key, valid in _MANIFEST_FIELDS.items():
            if key not in manifest:
                raise ValueError(f"missing {key!r}")
            if not valid(manifest[key]):
                raise ValueError(f"bad {key!r}")
        return manifest
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LabelCacheError(f"{path}: not a readable label-cache manifest ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _check_out_folder(root: Path) -> None:
    """``root`` must be a label-cache folder, an empty folder or a new path; checked before writing."""
    if root.exists() and not root.is_dir():
        raise LabelCacheError(f"{root}: exists and is not a folder (expected a label-cache folder)")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LabelCacheError(f"{root}: {parent} is not a folder")
            break
    if root.is_dir() and not (root / MANIFEST).is_file():
        # A cache writes its manifest first, so a folder without one holds only what a killed
        # build may leave (temp files, target scores); anything else is someone else's folder.
        foreign = sorted(p.name for p in root.iterdir() if not _is_cache_name(p.name))
        if foreign:
            raise LabelCacheError(f"{root}: not a label cache and not empty (holds {foreign[0]!r}); "
                                  "use a new or empty folder")


def _is_cache_name(name: str) -> bool:
    return name in (MANIFEST, "targets") or name.startswith(".") or \
        (name.startswith("shard-") and name.endswith(".npz"))


def _describe_difference(old: dict, new: dict) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "store":
            changed = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
            parts.append(f"store entries {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
        else:
            text = f"{key}: {json.dumps(a)} -> {json.dumps(b)}"
            parts.append(text if len(text) < 120 else f"{key}")
    return "; ".join(parts)


def _check_manifest(root: Path, manifest: dict, identity: dict, config_hash: str) -> None:
    if manifest.get("config_hash") != config_hash:
        diff = _describe_difference(manifest.get("identity", {}), identity)
        raise LabelCacheError(f"label cache {root} was built with other settings ({diff}); "
                              "use another cache folder or delete this one")


def _load_shard(path: Path, config_hash: str, needed: int, *, strict: bool = False) -> dict[str, np.ndarray] | None:
    """The shard's arrays if it is complete, ours and holds >= ``needed`` tasks; else None.

    An unreadable shard is rebuilt by a build (a warning) and is a LabelCacheError for a reader
    (``strict``), which says why instead of only "incomplete".
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in _SHARD_KEYS}
    except FileNotFoundError:
        return None
    except Exception as err:  # truncated, garbled or foreign file: rebuild it
        reason = f"{type(err).__name__}: {_one_line(err)}"
        if strict:
            raise LabelCacheError(f"{path}: unreadable label shard ({reason}); rebuild it with "
                                  "`python -m spider.labels build`") from None
        warnings.warn(f"{path}: unreadable label shard ({reason}); rebuilding it", stacklevel=3)
        return None
    n = arrays["task_index"].shape[0]
    if str(arrays["config_hash"]) != config_hash or n < needed:
        return None
    if arrays["raw"].shape[0] != n or arrays["scores"].shape[0] != n or arrays["ranking"].shape[0] != n:
        return None
    return arrays


def _shard_spec_texts(arrays: dict[str, np.ndarray]) -> list[str]:
    return arrays["specs"].tobytes().decode().split("\n")


def _save_shard(path: Path, config_hash: str, start: int, specs: list[TaskSpec], raw: np.ndarray,
                aggregator: str) -> None:
    from spider.aggregate import get_aggregator

    agg = get_aggregator(aggregator)(raw)
    specs_json = "\n".join(s.to_json() for s in specs).encode()  # compact JSON has no newline
    arrays = {
        "config_hash": np.array(config_hash),
        "task_index": np.arange(start, start + len(specs), dtype=np.int64),
        "specs": np.frombuffer(specs_json, dtype=np.uint8),
        "raw": np.ascontiguousarray(raw, dtype=np.float64),
        "scores": np.asarray(agg.scores, dtype=np.float64),
        "ranking": np.asarray(agg.ranking, dtype=np.int64),
    }
    _write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled)


def _sampler(config: LabelConfig, num_tasks: int) -> TaskSampler:
    store = _open_store(config.store)
    index = ClassIndex.from_store(store, config.general_encoder, config.pool, config.split)
    return TaskSampler(index, list(config.pool), config=config.task, num_tasks=num_tasks, seed=config.seed)


def build_label_cache(config: LabelConfig, out: str | os.PathLike, num_tasks: int, *, workers: int = 1,
                      progress: bool = True, device: str | None = None) -> BuildReport:
    """Label tasks ``0..num_tasks-1`` into ``out``, reusing every valid shard already there.

    ``workers`` > 1 runs spawned processes (a script calling this needs an ``if __name__ ==
    "__main__":`` guard). ``device`` is where the baselines compute (e.g. ``"cuda"``); it is not
    part of the settings hash, and results are bit-identical across runs on the same device kind.

    Raises:
        LabelCacheError: ``out`` holds a cache built with other settings.
    """
    if num_tasks < 1:
        raise ConfigError(f"num_tasks: expected >= 1, got {num_tasks}")
    started = time.perf_counter()
    root = Path(out)
    _check_out_folder(root)
    store = _open_store(config.store)
    fingerprint = store_fingerprint(store, (config.general_encoder, *config.models), config.pool, config.split)
    identity = config.identity(fingerprint)
    config_hash = _hash(identity)
    manifest = _read_manifest(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LabelCacheError(f"{root}: cannot create the label-cache folder ({_one_line(err)})") from None
    if manifest is not None:
        _check_manifest(root, manifest, identity, config_hash)
    _clean_temp_files(root)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "config_hash": config_hash, "identity": identity,
                "models": list(config.models), "baselines": list(config.baselines),
                "aggregator": config.aggregator, "shard_size": config.shard_size,
                "num_tasks": max(num_tasks, (manifest or {}).get("num_tasks", 0)),
                "complete_tasks": (manifest or {}).get("complete_tasks", 0)}
    _write_json(root / MANIFEST, manifest)

    sampler = _sampler(config, num_tasks)
    size = config.shard_size
    missing: list[int] = []
    reused = 0
    for k in range(math.ceil(num_tasks / size)):
        start, stop = k * size, min((k + 1) * size, num_tasks)
        arrays = _load_shard(_shard_path(root, k), config_hash, stop - start)
        if arrays is None:
            missing.append(k)
            continue
        stored = _shard_spec_texts(arrays)[: stop - start]
        if stored != [spec.to_json() for spec in sampler.tasks(0, range(start, stop))]:
            raise LabelCacheError(f"{_shard_path(root, k)}: holds other tasks than this build samples "
                                  "(was numpy's random generator changed?); delete the cache folder")
        reused += stop - start

    failed, first_warning, computed = 0, None, 0
    items = []
    for k in missing:
        for i in range(k * size, min((k + 1) * size, num_tasks)):
            items.append((i, sampler.task(0, i).to_json(), None, config.split, config.models, config.baselines))
    with _progress(progress) as bar:
        job = bar.add_task("labelling tasks", total=num_tasks, completed=reused)
        pending: dict[int, np.ndarray] = {}
        for index, raw, caught in _run(items, config.store, workers, device):
            pending[index] = raw
            failed += int(np.isnan(raw).sum())
            if caught and first_warning is None:
                first_warning = caught[0]
            computed += 1
            bar.advance(job)
            k = index // size
            start, stop = k * size, min((k + 1) * size, num_tasks)
            if all(i in pending for i in range(start, stop)):
                specs = sampler.tasks(0, range(start, stop))
                raw_k = np.stack([pending.pop(i) for i in range(start, stop)])
                _save_shard(_shard_path(root, k), config_hash, start, specs, raw_k, config.aggregator)
    manifest["complete_tasks"] = max(num_tasks, manifest["complete_tasks"])
    _write_json(root / MANIFEST, manifest)
    return BuildReport(num_tasks, computed, reused, time.perf_counter() - started, failed, first_warning)


def open_label_cache(out: str | os.PathLike, num_tasks: int | None = None,
                     config: LabelConfig | None = None) -> LabelCache:
    """Read the first ``num_tasks`` labelled tasks (default: as many as the manifest says are built).

    With ``config``, the cache must have been built with exactly these settings (and store contents).
    """
    root = Path(out)
    manifest = _read_manifest(root)
    if manifest is None:
        raise LabelCacheError(f"{root}: no label cache here ({MANIFEST} missing); build it with "
                              "`python -m spider.labels build`")
    config_hash = manifest["config_hash"]
    if config is not None:
        fingerprint = store_fingerprint(config.store, (config.general_encoder, *config.models), config.pool,
                                        config.split)
        identity = config.identity(fingerprint)
        _check_manifest(root, manifest, identity, _hash(identity))
    if num_tasks is None:
        num_tasks = int(manifest.get("complete_tasks", 0))
    if num_tasks < 1:
        raise LabelCacheError(f"{root}: the label cache holds no complete tasks; finish it with "
                              "`python -m spider.labels build`")
    size = int(manifest["shard_size"])
    specs, raws, scores, rankings = [], [], [], []
    for k in range(math.ceil(num_tasks / size)):
        needed = min(size, num_tasks - k * size)
        arrays = _load_shard(_shard_path(root, k), config_hash, needed, strict=True)
        if arrays is None:
            raise LabelCacheError(f"{root}: label cache incomplete (shard {k} missing or invalid for "
                                  f"{num_tasks} tasks); resume it with `python -m spider.labels build`")
        specs += _shard_spec_texts(arrays)[:needed]
        raws.append(arrays["raw"][:needed])
        scores.append(arrays["scores"][:needed])
        rankings.append(arrays["ranking"][:needed])
    return LabelCache(root, config_hash, list(manifest["models"]), list(manifest["baselines"]),
                      manifest["aggregator"], specs, np.concatenate(raws), np.concatenate(scores),
                      np.concatenate(rankings), manifest["identity"])


# ----------------------------------------------------------------------------- target scores


def target_baseline_scores(store: Any, cache_dir: str | os.PathLike, tasks: Sequence[tuple[str, TaskSpec | None]],
                           models: Sequence[str], baselines: Sequence[str], aggregator: str = "copeland", *,
                           split: str = "train", workers: int = 1, progress: bool = False,
                           device: str | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and aggregate scores of evaluation tasks, cached under ``cache_dir/targets``.

    Args:
        tasks: ``(dataset, spec)`` per evaluation task; ``spec=None`` is the whole stored
            ``dataset``/``split`` (the usual target task).

    Returns:
        ``(raw [T, K, M] float64, aggregate [T, M] float64)``; NaN where a baseline failed.
    """
    from spider.aggregate import get_aggregator

    store = _open_store(store)
    models, baselines = tuple(models), tuple(baselines)
    folder = Path(cache_dir) / "targets"
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temp_files(folder)
    # One file per dataset, named by a hash of everything its numbers depend on.
    by_dataset: dict[str, list[int]] = {}
    for t, (dataset, _) in enumerate(tasks):
        by_dataset.setdefault(dataset, []).append(t)
    raw = np.full((len(tasks), len(baselines), len(models)), np.nan)
    todo: list[tuple] = []
    files: dict[str, tuple[Path, str]] = {}
    for dataset, positions in by_dataset.items():
        spec_json = [None if tasks[t][1] is None else tasks[t][1].to_json() for t in positions]
        identity = {"models": list(models), "baselines": list(baselines), "split": split, "dataset": dataset,
                    "specs": spec_json, "store": store_fingerprint(store, models, [dataset], split)}
        digest = _hash(identity)
        path = folder / f"{dataset}-{digest[:16]}.npz"
        files[dataset] = (path, digest)
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["config_hash"]) == digest:
                    raw[positions] = data["raw"]
                    continue
        except FileNotFoundError:
            pass
        except Exception as err:
            warnings.warn(f"{path}: unreadable target scores ({type(err).__name__}); recomputing", stacklevel=2)
        for t, sj in zip(positions, spec_json):
            for m, model in enumerate(models):
                todo.append(((t, m), sj, dataset, split, (model,), baselines))
    if todo:
        left = {d: {(t, m) for (t, m), *_ in todo if tasks[t][0] == d} for d in by_dataset}
        with _progress(progress) as bar:
            job = bar.add_task("scoring targets", total=len(todo))
            for (t, m), column, _ in _run(todo, str(store.root), workers, device):
                raw[t, :, m] = column[:, 0]
                bar.advance(job)
                dataset = tasks[t][0]
                left[dataset].discard((t, m))
                if not left[dataset]:
                    path, digest = files[dataset]
                    block = raw[by_dataset[dataset]]
                    _write_atomic(path, lambda f, b=block, h=digest: np.savez_compressed(
                        f, config_hash=np.array(h), raw=b))
    aggregate = np.asarray(get_aggregator(aggregator)(raw).scores, dtype=np.float64) if len(tasks) else \
        np.zeros((0, len(models)))
    return raw, aggregate
