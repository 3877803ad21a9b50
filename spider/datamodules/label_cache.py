"""The label cache, as the datamodule reads it: format, settings, identity and the reader.

The builder is :mod:`spider.pipeline.labelling` (``spider labels build``).

The label cache holds transferability labels of a fixed bank of training tasks, built once.

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
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spider.baselines.batch import DEFAULT_BASELINES
from spider.datamodules.tasks import TaskConfig, TaskSpec, check_disjoint
from spider.errors import ConfigError, SpiderError, StoreError

__all__ = [
    "LabelCache",
    "LabelCacheError",
    "LabelConfig",
    "Labeller",
    "label_fingerprint",
    "open_label_cache",
    "read_target_scores",
    "resolve_label_config",
    "store_fingerprint",
    "task_array",
]

MANIFEST = "labels.json"


FORMAT = "spider-label-cache"


FORMAT_VERSION = 2  # 2: the general encoder counts by its class labels only


_SHARD_KEYS = ("config_hash", "task_index", "specs", "raw", "scores", "ranking")


class Labeller(Protocol):
    """The label builder a datamodule may be given (``spider.pipeline.labelling.LABELLER``)."""

    def build_label_cache(self, config: LabelConfig, out: str | os.PathLike, num_tasks: int, *, workers: int = 1,
                          progress: bool = True, device: str | None = None) -> Any: ...

    def target_baseline_scores(self, store: Any, cache_dir: str | os.PathLike, tasks: Sequence[tuple[str, Any]],
                               models: Sequence[str], baselines: Sequence[str], aggregator: str = "copeland", *,
                               split: str = "train", workers: int = 1, progress: bool = False,
                               device: str | None = None) -> tuple[np.ndarray, np.ndarray]: ...


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


def identity_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def open_store(store: Any):
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

    store = open_store(store)
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


def store_fingerprint(store: Any, models: Iterable[str], datasets: Iterable[str], split: str,
                      labels_of: Iterable[str] = ()) -> dict[str, str]:
    """``{"model/dataset/split": checksum}`` of the entries read, checking they line up row by row.

    The checksum combines the entry's recorded array checksums (cheap: read from its manifest);
    for the models in ``labels_of`` only their class labels count (the general encoder: tasks are
    sampled from its labels, and no label reads its features).
    """
    store = open_store(store)
    models, datasets, labels_of = list(models), list(datasets), set(labels_of)
    out: dict[str, str] = {}
    for dataset in datasets:
        sizes = {}
        for model in models:
            if not store.has(model, dataset, split):
                raise StoreError(f"store {store.root}: model {model!r} has no entry for {dataset}/{split}")
            entry = store.entry(model, dataset, split)
            sizes[model] = entry.num_samples
            arrays = entry.manifest.get("arrays", {})
            if model in labels_of:
                arrays = {"labels": arrays.get("labels")}
            sums = {k: v.get("sha256") for k, v in sorted(arrays.items()) if isinstance(v, dict)}
            out[f"{model}/{dataset}/{split}"] = identity_hash(sums if any(sums.values()) else
                                                              {"n": entry.num_samples, "dim": entry.dim})
        if len(set(sizes.values())) > 1:
            raise StoreError(f"store {store.root}: {dataset}/{split} has different sample counts per model "
                             f"({sizes}); all models must list the same samples")
    return out


def label_fingerprint(config: LabelConfig) -> dict[str, str]:
    """What the labels of ``config`` read from the store: the PTMs' entries and the general
    encoder's class labels, on the pool datasets."""
    return store_fingerprint(config.store, (config.general_encoder, *config.models), config.pool, config.split,
                             labels_of=(config.general_encoder,))


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


def shard_path(root: Path, k: int) -> Path:
    return root / f"shard-{k:05d}.npz"


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


def read_manifest(root: Path) -> dict | None:
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
        raise LabelCacheError(f"{path}: not a readable label-cache manifest ({one_line(err)})") from None


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


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


def check_manifest(root: Path, manifest: dict, identity: dict, config_hash: str) -> None:
    if manifest.get("config_hash") != config_hash:
        diff = _describe_difference(manifest.get("identity", {}), identity)
        raise LabelCacheError(f"label cache {root} was built with other settings ({diff}); "
                              "use another cache folder or delete this one")


def load_shard(path: Path, config_hash: str, needed: int, *, strict: bool = False) -> dict[str, np.ndarray] | None:
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
        reason = f"{type(err).__name__}: {one_line(err)}"
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


def shard_spec_texts(arrays: dict[str, np.ndarray]) -> list[str]:
    return arrays["specs"].tobytes().decode().split("\n")


def open_label_cache(out: str | os.PathLike, num_tasks: int | None = None,
                     config: LabelConfig | None = None) -> LabelCache:
    """Read the first ``num_tasks`` labelled tasks (default: as many as the manifest says are built).

    With ``config``, the cache must have been built with exactly these settings (and store contents).
    """
    root = Path(out)
    manifest = read_manifest(root)
    if manifest is None:
        raise LabelCacheError(f"{root}: no label cache here ({MANIFEST} missing); build it with "
                              "`python -m spider.labels build`")
    config_hash = manifest["config_hash"]
    if config is not None:
        identity = config.identity(label_fingerprint(config))
        check_manifest(root, manifest, identity, identity_hash(identity))
    if num_tasks is None:
        num_tasks = int(manifest.get("complete_tasks", 0))
    if num_tasks < 1:
        raise LabelCacheError(f"{root}: the label cache holds no complete tasks; finish it with "
                              "`python -m spider.labels build`")
    size = int(manifest["shard_size"])
    specs, raws, scores, rankings = [], [], [], []
    for k in range(math.ceil(num_tasks / size)):
        needed = min(size, num_tasks - k * size)
        arrays = load_shard(shard_path(root, k), config_hash, needed, strict=True)
        if arrays is None:
            raise LabelCacheError(f"{root}: label cache incomplete (shard {k} missing or invalid for "
                                  f"{num_tasks} tasks); resume it with `python -m spider.labels build`")
        specs += shard_spec_texts(arrays)[:needed]
        raws.append(arrays["raw"][:needed])
        scores.append(arrays["scores"][:needed])
        rankings.append(arrays["ranking"][:needed])
    return LabelCache(root, config_hash, list(manifest["models"]), list(manifest["baselines"]),
                      manifest["aggregator"], specs, np.concatenate(raws), np.concatenate(scores),
                      np.concatenate(rankings), manifest["identity"])


def read_target_scores(store: Any, cache_dir: str | os.PathLike, tasks: Sequence[tuple[str, TaskSpec | None]],
                       models: Sequence[str], baselines: Sequence[str], split: str = "train"
                       ) -> tuple[np.ndarray, dict[str, tuple[list[int], Path, str]]]:
    """Cached baseline scores of evaluation tasks (``cache_dir/targets``, one file per dataset named
    by a hash of everything its numbers depend on).

    Args:
        tasks: ``(dataset, spec)`` per evaluation task; ``spec=None`` is the whole stored
            ``dataset``/``split`` (the usual target task).

    Returns:
        ``(raw [T, K, M] float64, missing)``: NaN rows where no valid file exists, and for each such
        dataset ``(task positions, file path, hash)`` to compute and write.
    """
    store = open_store(store)
    models, baselines = tuple(models), tuple(baselines)
    folder = Path(cache_dir) / "targets"
    by_dataset: dict[str, list[int]] = {}
    for t, (dataset, _) in enumerate(tasks):
        by_dataset.setdefault(dataset, []).append(t)
    raw = np.full((len(tasks), len(baselines), len(models)), np.nan)
    missing: dict[str, tuple[list[int], Path, str]] = {}
    for dataset, positions in by_dataset.items():
        spec_json = [None if tasks[t][1] is None else tasks[t][1].to_json() for t in positions]
        identity = {"models": list(models), "baselines": list(baselines), "split": split, "dataset": dataset,
                    "specs": spec_json, "store": store_fingerprint(store, models, [dataset], split)}
        digest = identity_hash(identity)
        path = folder / f"{dataset}-{digest[:16]}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["config_hash"]) == digest:
                    raw[positions] = data["raw"]
                    continue
        except FileNotFoundError:
            pass
        except Exception as err:
            warnings.warn(f"{path}: unreadable target scores ({type(err).__name__}); recomputing", stacklevel=2)
        missing[dataset] = (positions, path, digest)
    return raw, missing
