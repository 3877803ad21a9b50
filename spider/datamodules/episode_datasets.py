"""The datasets, sampler and collate function behind :class:`~spider.datamodules.episodes.EpisodeDataModule`.

Batch keys and shapes: the module docstring of :mod:`spider.datamodules.episodes` ("Episode batches").
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from spider.datamodules.label_cache import task_array
from spider.datamodules.tasks import TaskSpec, contiguous
from spider.datamodules.tokens import class_centres
from spider.errors import ConfigError

__all__ = ["EVAL_EPOCH", "EpochBankSampler", "EvalTaskDataset", "LabelledTaskDataset", "collate_episodes",
           "epoch_order", "kept_classes"]

EVAL_EPOCH = 2**32 - 1  # "epoch" of the tasks sampled from target datasets
# Stream ids mixed into seeds so that task draws, epoch orders and PTM picks never share a stream.
_ORDER_STREAM, _SPECIFIC_STREAM, _CLASS_STREAM = 1, 2, 3


def epoch_order(seed: int, epoch: int, bank_size: int, length: int) -> np.ndarray:
    """[length] int64 bank indices of one epoch: concatenated permutations of the bank."""
    rng = np.random.default_rng([seed, _ORDER_STREAM, epoch])
    reps = -(-length // bank_size)
    return np.concatenate([rng.permutation(bank_size) for _ in range(reps)])[:length].astype(np.int64)


def kept_classes(seed: int, epoch: int, index: int, num_classes: int, keep: float) -> np.ndarray:
    """Sorted task-class indices one training episode keeps (a pure function of its arguments).

    The count is uniform in ``[max(2, ceil(keep * C)), C]``, the classes a uniform subset of that
    size; ``keep >= 1`` (or C <= 2) keeps all C classes.
    """
    if keep >= 1 or num_classes <= 2:
        return np.arange(num_classes, dtype=np.int64)
    rng = np.random.default_rng([seed, _CLASS_STREAM, epoch, index])
    low = min(num_classes, max(2, int(np.ceil(keep * num_classes))))
    size = int(rng.integers(low, num_classes + 1))
    return np.sort(rng.choice(num_classes, size=size, replace=False)).astype(np.int64)


class EpochBankSampler(Sampler):
    """Yields ``(epoch, bank index)`` keys: ``tasks_per_epoch`` draws from a bank of ``bank_size``.

    Lightning calls :meth:`set_epoch` before every epoch (also through its distributed wrapper).
    """

    def __init__(self, bank_size: int, tasks_per_epoch: int | None = None, seed: int = 0) -> None:
        if bank_size < 1:
            raise ConfigError(f"num_label_tasks: expected >= 1, got {bank_size}")
        self.bank_size = int(bank_size)
        self.tasks_per_epoch = int(tasks_per_epoch or bank_size)
        if self.tasks_per_epoch < 1:
            raise ConfigError(f"tasks_per_epoch: expected >= 1, got {tasks_per_epoch}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.tasks_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.seed, self.epoch, self.bank_size, self.tasks_per_epoch)
        return iter([(self.epoch, int(j)) for j in order])


class _StoreUser:
    """Opens the feature store lazily in each process (memory maps are not sent to workers)."""

    def __init__(self, store_root: str | os.PathLike) -> None:
        self.store_root = str(store_root)
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from spider.store import FeatureStore

            self._store = FeatureStore(self.store_root)
        return self._store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state


def _pick_specific(rng: np.random.Generator, mask: np.ndarray, count: int) -> np.ndarray:
    candidates = np.flatnonzero(mask)
    return rng.choice(candidates, size=min(count, len(candidates)), replace=False).astype(np.int64)


def _specific_item(centres_of: Any, chosen: np.ndarray, count: int, num_classes: int, max_dim: int) -> dict:
    tokens = torch.zeros(count, num_classes, max_dim)
    for s, m in enumerate(chosen):
        centres = centres_of(int(m))
        tokens[s, :, : centres.shape[1]] = centres
    models = torch.zeros(count, dtype=torch.int64)
    models[: len(chosen)] = torch.as_tensor(chosen)
    mask = torch.zeros(count, dtype=torch.bool)
    mask[: len(chosen)] = True
    return {"specific_models": models, "specific_mask": mask, "specific_tokens": tokens}


class LabelledTaskDataset(_StoreUser, Dataset):
    """Training episodes over the labelled bank; item key ``(epoch, bank index)`` or ``bank index``.

    Args:
        specs: the bank's tasks (:class:`TaskSpec` or its JSON, decoded per item to keep the bank
            compact); ``scores`` [N, M] aggregate labels (NaN = unscored).
        models: PTM ids (column order of ``scores``), ``model_dims`` their feature dims.
        specific_models: S > 0 adds PTM-specific tokens of S random labelled PTMs per episode
            (a pure function of (seed, epoch, bank index)).
        class_keep: < 1 draws, per episode, a subset of the task's classes (:func:`kept_classes`)
            whose centres form its tokens; the labels stay the whole task's. A bank of a few dozen
            labelled tasks otherwise shows the scorer the same token sets every epoch.
    """

    def __init__(self, store_root: str | os.PathLike, general: str, specs: Sequence[TaskSpec | str], scores: np.ndarray,
                 models: Sequence[str], model_dims: Sequence[int], *, specific_models: int = 0, seed: int = 0,
                 class_keep: float = 1.0) -> None:
        super().__init__(store_root)
        self.general = general
        self.specs = list(specs)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.models = list(models)
        self.model_dims = list(model_dims)
        self.specific_models = int(specific_models)
        self.seed = int(seed)
        self.class_keep = float(class_keep)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        epoch, j = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
        spec = self.specs[j]
        spec = TaskSpec.from_json(spec) if isinstance(spec, str) else spec
        if self.class_keep < 1:
            spec = spec.select(kept_classes(self.seed, epoch, j, spec.num_classes, self.class_keep))
        labels = spec.labels()
        centres = class_centres(task_array(self.store, self.general, spec), labels, spec.num_classes)
        mask = np.isfinite(self.scores[j])
        item = {"task_tokens": centres.float(),
                "target_scores": torch.as_tensor(np.where(mask, self.scores[j], 0.0), dtype=torch.float32),
                "model_mask": torch.as_tensor(mask)}
        if self.specific_models > 0:
            rng = np.random.default_rng([self.seed, _SPECIFIC_STREAM, epoch, j])
            chosen = _pick_specific(rng, mask, self.specific_models)
            item.update(_specific_item(
                lambda m: class_centres(task_array(self.store, self.models[m], spec), labels, spec.num_classes),
                chosen, self.specific_models, spec.num_classes, max(self.model_dims)))
        return item


class EvalTaskDataset(_StoreUser, Dataset):
    """Evaluation episodes: target tasks with ground truth and baseline scores.

    Item ``i`` is task ``tasks[i] = (target dataset, spec or None = the whole stored dataset)``.
    Class centres are computed on first use and kept (targets are few).
    """

    def __init__(self, store_root: str | os.PathLike, general: str, split: str, tasks: Sequence[tuple[str, Any]],
                 target_names: Sequence[str], models: Sequence[str], model_dims: Sequence[int], truth: np.ndarray,
                 baseline_raw: np.ndarray, baseline_aggregate: np.ndarray, *, specific_models: int = 0,
                 seed: int = 0) -> None:
        super().__init__(store_root)
        self.general, self.split = general, split
        self.tasks = list(tasks)
        self.target_names = list(target_names)
        self.models, self.model_dims = list(models), list(model_dims)
        self.truth = np.asarray(truth, dtype=np.float64)  # [T targets, M]
        self.baseline_raw = np.asarray(baseline_raw, dtype=np.float64)  # [len(tasks), K, M]
        self.baseline_aggregate = np.asarray(baseline_aggregate, dtype=np.float64)  # [len(tasks), M]
        self.specific_models = int(specific_models)
        self.seed = int(seed)
        self._centres: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def labels(self, i: int) -> np.ndarray:
        dataset, spec = self.tasks[i]
        if spec is None:
            return contiguous(self.store.entry(self.general, dataset, self.split).labels())
        return spec.labels()

    def centres(self, i: int, model: str) -> torch.Tensor:
        """[C, D_model] class centres of task ``i`` under ``model`` (cached)."""
        key = (i, model)
        if key not in self._centres:
            dataset, spec = self.tasks[i]
            if spec is None:
                features = self.store.entry(model, dataset, self.split).features()
            else:
                features = task_array(self.store, model, spec)
            labels = self.labels(i)
            self._centres[key] = class_centres(features, labels, int(labels.max()) + 1).float()
        return self._centres[key]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        dataset, _ = self.tasks[i]
        t = self.target_names.index(dataset)
        truth = self.truth[t]
        truth_mask = np.isfinite(truth)
        agg = self.baseline_aggregate[i]
        agg_mask = np.isfinite(agg)
        item = {
            "task_tokens": self.centres(i, self.general),
            "target_scores": torch.as_tensor(np.where(agg_mask, agg, 0.0), dtype=torch.float32),
            "model_mask": torch.as_tensor(agg_mask),
            "truth": torch.as_tensor(np.where(truth_mask, truth, 0.0), dtype=torch.float32),
            "truth_mask": torch.as_tensor(truth_mask),
            "target_index": torch.tensor(t, dtype=torch.int64),
            "task_index": torch.tensor(i, dtype=torch.int64),
            "baseline_scores": torch.as_tensor(np.concatenate([self.baseline_raw[i], agg[None]]), dtype=torch.float32),
        }
        if self.specific_models > 0:
            rng = np.random.default_rng([self.seed, _SPECIFIC_STREAM, EVAL_EPOCH, i])
            chosen = _pick_specific(rng, np.ones(len(self.models), dtype=bool), self.specific_models)
            num_classes = item["task_tokens"].shape[0]
            item.update(_specific_item(lambda m: self.centres(i, self.models[m]), chosen, self.specific_models,
                                       num_classes, max(self.model_dims)))
        return item


def collate_episodes(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack episodes, padding classes to the batch maximum C with an explicit ``task_mask``.

    ``task_tokens`` [C_i, Dg] -> [B, C, Dg] (zeros past C_i), ``task_mask`` [B, C] bool,
    ``specific_tokens`` [S, C_i, Dmax] -> [B, S, C, Dmax]; every other key is stacked.
    """
    sizes = [item["task_tokens"].shape[0] for item in items]
    num_classes = max(sizes)
    batch: dict[str, torch.Tensor] = {}
    tokens = torch.zeros(len(items), num_classes, items[0]["task_tokens"].shape[1])
    mask = torch.zeros(len(items), num_classes, dtype=torch.bool)
    for b, (item, c) in enumerate(zip(items, sizes)):
        tokens[b, :c] = item["task_tokens"]
        mask[b, :c] = True
    batch["task_tokens"], batch["task_mask"] = tokens, mask
    for key in items[0]:
        if key == "task_tokens":
            continue
        if key == "specific_tokens":
            s, _, d = items[0][key].shape
            padded = torch.zeros(len(items), s, num_classes, d)
            for b, (item, c) in enumerate(zip(items, sizes)):
                padded[b, :, :c] = item[key]
            batch[key] = padded
        else:
            batch[key] = torch.stack([item[key] for item in items])
    return batch
