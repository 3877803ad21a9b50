"""Training tasks: what a task is (:class:`TaskSpec`) and how tasks are drawn (:class:`TaskSampler`).

A training task mixes classes of a few *pool* datasets (paper, appendix B: 2-4 datasets, up to
100 classes, up to 50 samples per class; where a dataset has fewer, take all of them). A task is
pure data - which (dataset, class) pairs, in which order, and which stored rows of each class - so
it can be written to the label cache, compared and hashed.

The sampler is map-style and finite: task ``i`` of epoch ``e`` is a pure function of
``(seed, e, i)`` (its own ``numpy`` generator seeded with ``[seed, e, i]``), so every process
computes the same tasks without communication and a distributed sampler can shard the indices.

Class membership comes from the general encoder's labels of each pool dataset in the store; by the
store convention the same rows select the same samples under every PTM.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from spider.errors import ConfigError, SpiderError, StoreError

__all__ = ["TASK_PRESETS", "ClassIndex", "TaskConfig", "TaskSampler", "TaskSpec", "check_disjoint"]


@dataclass(frozen=True)
class TaskConfig:
    """How many datasets, classes and samples a training task has (inclusive ranges).

    Per task, the number of datasets, of classes and of samples per class are drawn uniformly
    from their ranges and then capped by what exists (paper: "in cases where the number of
    categories or examples exceeds the limits, we select the maximum allowable value"). A class
    takes part only if it has at least ``min_class_size`` samples (default:
    ``min_samples_per_class``).
    """

    min_datasets_per_task: int = 2
    max_datasets_per_task: int = 4
    min_classes_per_task: int = 2
    max_classes_per_task: int = 100
    min_samples_per_class: int = 2
    max_samples_per_class: int = 50
    min_class_size: int | None = None

    def __post_init__(self) -> None:
        for lo, hi, least in (("min_datasets_per_task", "max_datasets_per_task", 1),
                              ("min_classes_per_task", "max_classes_per_task", 2),
                              ("min_samples_per_class", "max_samples_per_class", 1)):
            a, b = getattr(self, lo), getattr(self, hi)
            if not isinstance(a, int) or not isinstance(b, int) or isinstance(a, bool) or isinstance(b, bool):
                raise ConfigError(f"{lo}/{hi}: expected integers, got {a!r}/{b!r}")
            if a < least or b < a:
                raise ConfigError(f"{lo}/{hi}: expected {least} <= {lo} <= {hi}, got {a} and {b}")
        if self.min_class_size is not None and (not isinstance(self.min_class_size, int) or self.min_class_size < 1):
            raise ConfigError(f"min_class_size: expected a positive integer or None, got {self.min_class_size!r}")

    @property
    def class_size_threshold(self) -> int:
        return self.min_class_size if self.min_class_size is not None else self.min_samples_per_class

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TaskConfig:
        """A named setting (:data:`TASK_PRESETS`) with optional field overrides."""
        if name not in TASK_PRESETS:
            raise ConfigError(f"task preset: unknown {name!r}; available: {', '.join(sorted(TASK_PRESETS))}")
        return replace(TASK_PRESETS[name], **overrides)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TaskConfig:
        """Pick this dataclass's fields out of a larger config mapping (other keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TASK_PRESETS: dict[str, TaskConfig] = {
    # Appendix B: 2-4 mixed datasets, 100 classes, 50 samples per class (capped by what exists).
    "paper": TaskConfig(2, 4, 100, 100, 50, 50, min_class_size=2),
    # Few-shot training tasks: the same mixing with 1-10 examples per class.
    "few_shot": TaskConfig(2, 4, 5, 100, 1, 10, min_class_size=2),
}


@dataclass(frozen=True)
class TaskSpec:
    """One task: its classes in task order and, per class, rows of that dataset's stored split.

    ``classes[k] = (dataset id, class id in that dataset)`` is task class ``k``; ``rows[k]`` are
    sorted row indices into ``store.entry(model, dataset, split)`` (any model: rows agree).
    Hashable, comparable, and round-trips through :meth:`to_json` / :meth:`from_json`.
    """

    classes: tuple[tuple[str, int], ...]
    rows: tuple[tuple[int, ...], ...]
    split: str = "train"

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.rows):
            raise SpiderError(f"TaskSpec: {len(self.classes)} classes but {len(self.rows)} row lists")
        if any(len(r) == 0 for r in self.rows):
            raise SpiderError("TaskSpec: every class needs at least one row")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def select(self, classes: Any) -> TaskSpec:
        """The task restricted to task classes ``classes`` (indices, kept in the order given)."""
        idx = [int(k) for k in np.asarray(classes, dtype=np.int64).reshape(-1)]
        if not idx or min(idx) < 0 or max(idx) >= self.num_classes or len(set(idx)) != len(idx):
            raise SpiderError(f"TaskSpec.select: expected distinct class indices in [0, {self.num_classes}), got {idx}")
        return TaskSpec(classes=tuple(self.classes[k] for k in idx), rows=tuple(self.rows[k] for k in idx),
                        split=self.split)

    @classmethod
    def whole(cls, dataset: str, labels: Any, split: str = "train") -> TaskSpec:
        """A stored dataset's whole ``split`` as one task: every class (ascending id) with every row;
        ``labels`` [N] are the stored labels of that split."""
        labels = np.asarray(labels).reshape(-1)
        ids = np.unique(labels)
        if len(ids) < 2:
            raise SpiderError(f"TaskSpec.whole: {dataset}/{split} has {len(ids)} class(es); a task needs at least 2")
        return cls(classes=tuple((dataset, int(c)) for c in ids),
                   rows=tuple(tuple(int(r) for r in np.flatnonzero(labels == c)) for c in ids), split=split)

    @property
    def num_samples(self) -> int:
        return sum(len(r) for r in self.rows)

    @property
    def datasets(self) -> tuple[str, ...]:
        """Datasets of the task, in order of first appearance."""
        return tuple(dict.fromkeys(d for d, _ in self.classes))

    def counts(self) -> np.ndarray:
        """[C] int64 samples per task class."""
        return np.array([len(r) for r in self.rows], dtype=np.int64)

    def labels(self) -> np.ndarray:
        """[N] int64 task-local labels (class k in task order), samples grouped class by class."""
        return np.repeat(np.arange(self.num_classes, dtype=np.int64), self.counts())

    def row_groups(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Per dataset: ``(dataset, rows [n] int64, positions [n] int64)``.

        ``positions`` say where those rows go in the task's sample order (the order of
        :meth:`labels`), so a task's features are gathered with one read per dataset.
        """
        offsets = np.concatenate([[0], np.cumsum(self.counts())])
        groups: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for k, ((dataset, _), rows) in enumerate(zip(self.classes, self.rows)):
            rows_k, pos_k = groups.setdefault(dataset, ([], []))
            rows_k.append(np.asarray(rows, dtype=np.int64))
            pos_k.append(np.arange(offsets[k], offsets[k + 1], dtype=np.int64))
        return [(d, np.concatenate(r), np.concatenate(p)) for d, (r, p) in groups.items()]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "classes": [[d, int(c)] for d, c in self.classes],
                "rows": [list(map(int, r)) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        try:
            return cls(classes=tuple((str(d), int(c)) for d, c in data["classes"]),
                       rows=tuple(tuple(int(i) for i in r) for r in data["rows"]),
                       split=str(data.get("split", "train")))
        except (KeyError, TypeError, ValueError) as err:
            raise SpiderError(f"TaskSpec: malformed task description ({err!r})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        return cls.from_dict(json.loads(text))


class ClassIndex:
    """Rows of every class of some datasets of one split, read once from the general encoder.

    ``rows[dataset][class_id]`` is a sorted int64 array of row indices.
    """

    def __init__(self, rows: Mapping[str, Mapping[int, np.ndarray]], split: str = "train") -> None:
        self.rows = {d: dict(sorted(r.items())) for d, r in rows.items()}
        self.split = split

    @classmethod
    def from_labels(cls, labels: Mapping[str, np.ndarray], split: str = "train") -> ClassIndex:
        """Build from ``{dataset: labels [N] int}``."""
        rows: dict[str, dict[int, np.ndarray]] = {}
        for dataset, y in labels.items():
            y = np.asarray(y)
            order = np.argsort(y, kind="stable")
            classes, starts = np.unique(y[order], return_index=True)
            bounds = list(starts[1:]) + [len(y)]
            rows[dataset] = {int(c): np.sort(order[s:e]).astype(np.int64)
                             for c, s, e in zip(classes, starts, bounds)}
        return cls(rows, split)

    @classmethod
    def from_store(cls, store: Any, general_encoder: str, datasets: Iterable[str],
                   split: str = "train") -> ClassIndex:
        """Read class membership of ``datasets`` from ``general_encoder``'s stored labels."""
        labels = {}
        for dataset in datasets:
            if not store.has(general_encoder, dataset, split):
                raise StoreError(f"pool dataset {dataset!r}: no entry {general_encoder}/{dataset}/{split} "
                                 f"in the store at {store.root}")
            entry = store.entry(general_encoder, dataset, split)
            if entry.is_regression:
                raise SpiderError(f"pool dataset {dataset!r}: regression labels cannot form classification tasks")
            labels[dataset] = entry.labels()
        return cls.from_labels(labels, split)

    def eligible(self, dataset: str, min_size: int) -> list[int]:
        """Class ids of ``dataset`` with at least ``min_size`` samples."""
        return [c for c, r in self.rows[dataset].items() if len(r) >= min_size]


def check_disjoint(pool: Iterable[str], targets: Iterable[str]) -> None:
    """Training pool and evaluation targets must not share a dataset (their classes would overlap)."""
    overlap = sorted(set(pool) & set(targets))
    if overlap:
        raise ConfigError(f"pool_datasets: {', '.join(map(repr, overlap))} also a target dataset; "
                          "the training pool must be disjoint from the targets")


class TaskSampler(Dataset):
    """Map-style, finite, deterministic sampler of training tasks.

    ``sampler[i]`` is task ``i`` of the current epoch; :meth:`task` ``(epoch, i)`` is the pure
    function behind it. Every process constructing the sampler with the same arguments sees the
    same tasks, so ``DistributedSampler(sampler)`` shards an epoch without communication.

    Args:
        index: class membership of the pool datasets (:meth:`ClassIndex.from_store`).
        pool: pool dataset ids (default: every dataset of ``index``); kept sorted.
        config: task size ranges.
        num_tasks: tasks per epoch (``len(sampler)``).
        seed: base seed.
        targets: evaluation dataset ids; a pool dataset among them is an error.
    """

    def __init__(self, index: ClassIndex, pool: Sequence[str] | None = None, *,
                 config: TaskConfig | None = None, num_tasks: int = 1000, seed: int = 0,
                 targets: Iterable[str] = ()) -> None:
        self.config = config or TaskConfig()
        self.pool = sorted(pool if pool is not None else index.rows)
        if not self.pool:
            raise ConfigError("pool_datasets: the training pool is empty")
        if len(set(self.pool)) != len(self.pool):
            raise ConfigError(f"pool_datasets: duplicate dataset ids in {self.pool}")
        check_disjoint(self.pool, targets)
        if num_tasks < 1:
            raise ConfigError(f"num_tasks: expected >= 1, got {num_tasks}")
        self.index = index
        self.split = index.split
        self.num_tasks = int(num_tasks)
        self.seed = int(seed)
        self.epoch = 0
        threshold = self.config.class_size_threshold
        self._eligible: dict[str, np.ndarray] = {}
        for dataset in self.pool:
            if dataset not in index.rows:
                raise ConfigError(f"pool_datasets: {dataset!r} is not in the class index")
            classes = index.eligible(dataset, threshold)
            if len(classes) < 2:
                raise ConfigError(f"pool_datasets: {dataset!r} has {len(classes)} class(es) with >= {threshold} "
                                  "samples; a pool dataset needs at least 2")
            self._eligible[dataset] = np.asarray(classes, dtype=np.int64)

    @classmethod
    def from_store(cls, store: Any, general_encoder: str, pool: Sequence[str], *, split: str = "train",
                   targets: Iterable[str] = (), **kwargs: Any) -> TaskSampler:
        """Sampler over ``pool`` with class membership read from the store (disjointness checked first)."""
        check_disjoint(pool, targets)
        index = ClassIndex.from_store(store, general_encoder, sorted(pool), split)
        return cls(index, pool, targets=targets, **kwargs)

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, i: int) -> TaskSpec:
        if not 0 <= i < self.num_tasks:
            raise IndexError(f"task index {i} out of range [0, {self.num_tasks})")
        return self.task(self.epoch, i)

    def set_epoch(self, epoch: int) -> None:
        """Tasks of ``epoch`` from now on (call at the start of every epoch)."""
        self.epoch = int(epoch)

    def task(self, epoch: int, i: int) -> TaskSpec:
        """Task ``i`` of ``epoch``: depends only on (seed, epoch, i) and the constructor arguments."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        num_datasets = min(int(rng.integers(cfg.min_datasets_per_task, cfg.max_datasets_per_task + 1)),
                           len(self.pool))
        chosen = [self.pool[j] for j in rng.choice(len(self.pool), size=num_datasets, replace=False)]
        num_classes = int(rng.integers(cfg.min_classes_per_task, cfg.max_classes_per_task + 1))
        candidates = [(d, int(c)) for d in chosen for c in self._eligible[d]]
        num_classes = min(num_classes, len(candidates))
        # Every chosen dataset contributes a class, so a "2-4 dataset" task really mixes them.
        chosen = chosen[:num_classes]
        first = [(d, int(self._eligible[d][rng.integers(len(self._eligible[d]))])) for d in chosen]
        taken = set(first)
        rest = [pair for pair in candidates if pair not in taken]
        extra = rng.choice(len(rest), size=num_classes - len(first), replace=False) if rest else []
        classes = first + [rest[j] for j in extra]
        classes = [classes[j] for j in rng.permutation(len(classes))]
        per_class = int(rng.integers(cfg.min_samples_per_class, cfg.max_samples_per_class + 1))
        rows = []
        for dataset, c in classes:
            available = self.index.rows[dataset][c]
            pick = rng.choice(len(available), size=min(per_class, len(available)), replace=False)
            rows.append(tuple(int(r) for r in np.sort(available[pick])))
        return TaskSpec(classes=tuple(classes), rows=tuple(rows), split=self.split)

    def tasks(self, epoch: int, indices: Iterable[int] | None = None) -> list[TaskSpec]:
        """Tasks ``indices`` (default: all) of ``epoch``."""
        return [self.task(epoch, i) for i in (range(self.num_tasks) if indices is None else indices)]


def contiguous(labels: np.ndarray) -> np.ndarray:
    """Class ids remapped to 0..C-1 (classes without samples dropped)."""
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)
