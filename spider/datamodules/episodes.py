"""Episodes for training and evaluating a PTM ranker: the Lightning DataModule and its parts.

Training episodes come from the label cache (:mod:`spider.pipeline.labelling`): a fixed bank of
labelled tasks, of which every epoch draws ``tasks_per_epoch`` in an order that is a pure
function of ``(seed, epoch)``. The train sampler yields ``(epoch, bank index)`` keys, so a
DataLoader worker needs no epoch state and Lightning's distributed sampler wrapper shards the
keys across ranks with equal counts (it pads), so no rank waits for another's extra batch.

Evaluation episodes come from the target datasets of the ground-truth file (each whole target
dataset is one task, or ``val_tasks_per_target`` tasks sampled from it): validation targets feed
``val_dataloader`` (every decision), test targets ``test_dataloader`` (reported, never used to
decide). ``target_index`` of an evaluation batch indexes :attr:`EpisodeDataModule.target_names`
(validation targets first, then test targets). Validation is *replicated*, not
sharded: every rank scores every target (targets are few), so per-task metric averages reduced
with ``sum`` across ranks equal the single-process values exactly.

Episode batches (B episodes, C classes padded to the batch maximum, M PTMs, Dg the general
encoder's dim, S PTM-specific extras, Dmax the largest PTM dim, K baselines):

* every batch: ``task_tokens`` float [B, C, Dg] (class centres, zeros past a task's classes),
  ``task_mask`` bool [B, C], ``target_scores`` float [B, M] (training: the label; evaluation: the
  aggregate baseline score), ``model_mask`` bool [B, M] (False where a PTM has no score);
* with ``specific_models`` S > 0: ``specific_models`` int64 [B, S], ``specific_mask`` bool [B, S],
  ``specific_tokens`` float [B, S, C, Dmax] (zero-padded past each PTM's dim);
* evaluation batches also: ``truth`` float [B, M] and ``truth_mask`` bool [B, M] (ground truth),
  ``target_index`` int64 [B] (into :attr:`EpisodeDataModule.target_names`), ``task_index`` int64
  [B] (position in the stage's task list, for :meth:`EpisodeDataModule.specific_tokens_for`) and
  ``baseline_scores`` float [B, K+1, M] (each baseline, then the aggregate; NaN where a baseline
  failed on a model, shown as such in results tables).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from spider.baselines.batch import DEFAULT_BASELINES
from spider.aggregate import get_aggregator
from spider.datamodules.finetune_bank import open_bank
from spider.datamodules.ground_truth_csv import GroundTruth, read_ground_truth
from spider.datamodules.label_cache import (
    LabelCacheError,
    LabelConfig,
    Labeller,
    open_label_cache,
    read_target_scores,
    resolve_label_config,
    task_array,
)
from spider.datamodules.episode_datasets import (
    EVAL_EPOCH,
    EpochBankSampler,
    EvalTaskDataset,
    LabelledTaskDataset,
    collate_episodes,
    epoch_order,
)
from spider.datamodules.label_sources import TrainingLabels, plus_targets, training_labels
from spider.priors import PriorInputs
from spider.datamodules.tasks import ClassIndex, TaskConfig, TaskSampler, TaskSpec
from spider.datamodules.tokens import class_centres
from spider.errors import ConfigError, StoreError
from spider.familiarity import TaskReference

__all__ = ["EpisodeDataModule", "EpochBankSampler", "EvalTaskDataset", "LabelledTaskDataset",
           "collate_episodes", "epoch_order", "training_reference"]



def training_reference(store: Any, general: str, specs: Sequence[TaskSpec | str]) -> TaskReference:
    """The training tasks ``specs`` (TaskSpecs or their JSON, in order) as a
    :class:`spider.familiarity.TaskReference`: class centres under ``general`` in ``store`` (a
    root or an opened store) and the pool datasets each task draws from."""
    from spider.store import FeatureStore

    store = FeatureStore(store) if isinstance(store, (str, os.PathLike)) else store
    tasks = [TaskSpec.from_json(s) if isinstance(s, str) else s for s in specs]
    return TaskReference([class_centres(task_array(store, general, s), s.labels(), s.num_classes) for s in tasks],
                         [sorted({d for d, _ in s.classes}) for s in tasks])


class EpisodeDataModule(L.LightningDataModule):
    """Training episodes from the label cache; validation/test episodes from the targets.

    Argument names follow ``DataConfig`` of :mod:`spider.config`. ``prepare_data`` builds (or
    resumes, or just checks) the label cache and the targets' baseline scores; ``setup`` reads them.

    Args:
        store: feature-store root. label_cache: cache folder (created if needed).
        ground_truth: CSV of the targets (``None``: no validation/test data).
        general: id of the general encoder in the store.
        models: PTMs to rank (default: every stored model except ``general``).
        pool_datasets: training datasets (default: every stored dataset that is not a target).
        val_datasets: validation targets (default: none, so no validation data).
        test_datasets: test targets (default: every dataset of the ground truth not in ``val_datasets``).
        split / target_split: stored split of pool / target datasets.
        task: task sizes (:class:`TaskConfig`; default its paper defaults).
        num_label_tasks: size of the labelled bank; tasks_per_epoch: draws per epoch (default: the bank).
        val_tasks_per_target: 0 = each whole target dataset is one task; k > 0 = k tasks sampled
            from it (same size ranges, one dataset).
        baselines / aggregator: label and baseline-table scores.
        specific_models: S > 0 adds PTM-specific tokens of S random PTMs per episode (re-ranker).
        class_keep: in (0, 1]; < 1 builds each training episode's tokens from a random subset of at
            least that fraction of its task's classes (``episode_datasets.kept_classes``), labels unchanged.
        val_targets_as_tasks: n > 0 adds each validation target (its whole ``target_split``, its
            ground truth as labels) n times to the training tasks
            (:func:`~spider.datamodules.label_sources.plus_targets`). The validation targets then
            decide nothing: there is no validation stage (``val_dataloader`` is empty).
        label_workers: processes for building labels; num_workers: DataLoader workers;
            label_device: where label baselines compute (default CPU).
        build_labels: False makes ``prepare_data`` only check that the cache is complete.
        labeller: what builds missing labels and targets' scores (``spider.pipeline.labelling.LABELLER``;
            the training entry passes it). None: only read finished caches (``build_labels`` must be False).
    """

    def __init__(self, store: str | os.PathLike, label_cache: str | os.PathLike,
                 ground_truth: str | os.PathLike | None = None, *, general: str = "general",
                 models: Sequence[str] | None = None, pool_datasets: Sequence[str] | None = None,
                 val_datasets: Sequence[str] | None = None, test_datasets: Sequence[str] | None = None,
                 split: str = "train", target_split: str = "train", task: TaskConfig | None = None,
                 num_label_tasks: int = 256, tasks_per_epoch: int | None = None,
                 val_tasks_per_target: int = 0, baselines: Sequence[str] = DEFAULT_BASELINES,
                 aggregator: str = "copeland", batch_size: int = 16, val_batch_size: int | None = None,
                 specific_models: int = 0, num_workers: int = 0, label_workers: int = 1, seed: int = 0,
                 shard_size: int = 64, build_labels: bool = True, progress: bool = True,
                 label_device: str | None = None, label_source: str = "copeland",
                 finetune_bank: str | os.PathLike | None = None, mixed_weight: int = 1,
                 selected_members: int = 3, class_keep: float = 1.0, val_targets_as_tasks: int = 0,
                 labeller: Labeller | None = None,
                 source_domains: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        if build_labels and labeller is None:
            raise ConfigError("build_labels: building labels needs a labeller (spider.pipeline.labelling.LABELLER); "
                              "pass one or set build_labels=False to read a finished cache")
        self.labeller = labeller
        self.store_root = str(store)
        self.label_cache_dir = Path(label_cache)
        self.ground_truth_path = None if ground_truth is None else Path(ground_truth)
        self.general = general
        self._models_arg = None if models is None else list(models)
        self._pool_arg = None if pool_datasets is None else list(pool_datasets)
        self._val_arg = [] if val_datasets is None else list(val_datasets)
        self._test_arg = None if test_datasets is None else list(test_datasets)
        self.split, self.target_split = split, target_split
        self.task_config = task if task is not None else TaskConfig()
        for name, value in (("num_label_tasks", num_label_tasks), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"{name}: expected >= 1, got {value}")
        for name, value in (("val_tasks_per_target", val_tasks_per_target), ("specific_models", specific_models),
                            ("num_workers", num_workers), ("label_workers", label_workers),
                            ("val_targets_as_tasks", val_targets_as_tasks)):
            if value < 0:
                raise ConfigError(f"{name}: expected >= 0, got {value}")
        if not 0 < class_keep <= 1:  # NaN fails too
            raise ConfigError(f"class_keep: expected a float in (0, 1], got {class_keep}")
        self.class_keep = float(class_keep)
        self.val_targets_as_tasks = int(val_targets_as_tasks)
        self.num_label_tasks = int(num_label_tasks)
        self.tasks_per_epoch = int(tasks_per_epoch or num_label_tasks)
        self.val_tasks_per_target = int(val_tasks_per_target)
        self.baselines = list(baselines)
        self.aggregator = aggregator
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.specific_models = int(specific_models)
        self.num_workers = int(num_workers)
        self.label_workers = int(label_workers)
        self.seed = int(seed)
        self.shard_size = int(shard_size)
        self.build_labels = bool(build_labels)
        self.progress = bool(progress)
        self.label_device = label_device
        self.label_source, self.mixed_weight, self.selected_members = label_source, mixed_weight, selected_members
        self.finetune_bank = None if finetune_bank is None else Path(finetune_bank)
        # {"datasets": pool dataset id -> domain, "models": PTM id -> domains}: what a zoo knows of
        # its sources, for the priors that tell a PTM's own domains from the others.
        self.source_domains = dict(source_domains or {})
        self.training_labels: TrainingLabels | None = None
        self._resolved = False
        self.train_dataset: LabelledTaskDataset | None = None
        self.eval_dataset: EvalTaskDataset | None = None

    # ------------------------------------------------------------------ names and settings

    def _resolve(self) -> None:
        """Read names and dims from the store and the ground truth (cheap; once)."""
        if self._resolved:
            return
        from spider.store import FeatureStore

        store = FeatureStore(self.store_root)
        self.ground_truth: GroundTruth | None = (None if self.ground_truth_path is None
                                                 else read_ground_truth(self.ground_truth_path))
        val = self._val_arg
        if self._test_arg is not None:
            test = self._test_arg
        else:
            test = [d for d in self.ground_truth.datasets if d not in val] if self.ground_truth is not None else []
        overlap = sorted(set(val) & set(test))
        if overlap:
            raise ConfigError(f"val_datasets/test_datasets: {overlap[0]!r} is both a validation and a test target")
        targets = [*val, *test]
        if targets and self.ground_truth is None:
            raise ConfigError("val_datasets/test_datasets: evaluation targets need a ground_truth file")
        self.label_config: LabelConfig = resolve_label_config(
            store, general_encoder=self.general, models=self._models_arg, pool=self._pool_arg, targets=targets,
            split=self.split, task=self.task_config, seed=self.seed, baselines=self.baselines,
            aggregator=self.aggregator, shard_size=self.shard_size)
        models = list(self.label_config.models)
        for dataset in targets:
            for model in (self.general, *models):
                if not store.has(model, dataset, self.target_split):
                    raise StoreError(f"val_datasets/test_datasets: no entry {model}/{dataset}/{self.target_split} in the "
                                     f"store at {store.root}")
            if dataset not in self.ground_truth.datasets:
                raise ConfigError(f"val_datasets/test_datasets: {dataset!r} has no rows in {self.ground_truth_path}")
        pool0 = self.label_config.pool[0]
        self._model_names = models
        self._target_names = list(targets)
        self._val_names, self._test_names = list(val), list(test)
        self._model_dims = [store.entry(m, pool0, self.split).dim for m in models]
        self._general_dim = store.entry(self.general, pool0, self.split).dim
        self._resolved = True

    @property
    def model_names(self) -> list[str]:
        """PTM ids in model-index order (columns of every [B, M] tensor)."""
        self._resolve()
        return list(self._model_names)

    @property
    def num_models(self) -> int:
        return len(self.model_names)

    @property
    def target_names(self) -> list[str]:
        """Target dataset ids (``target_index`` of evaluation batches indexes this list)."""
        self._resolve()
        return list(self._target_names)

    @property
    def val_names(self) -> list[str]:
        """Validation targets (the first ``len(val_names)`` entries of :attr:`target_names`)."""
        self._resolve()
        return list(self._val_names)

    @property
    def test_names(self) -> list[str]:
        """Test targets (the last ``len(test_names)`` entries of :attr:`target_names`)."""
        self._resolve()
        return list(self._test_names)

    def stage_names(self, stage: str) -> list[str]:
        """Targets ``stage`` ("val" or "test") evaluates: none for "val" when the fit trains on its
        validation targets (``val_targets_as_tasks``)."""
        if stage == "val":
            return [] if self.val_targets_as_tasks else self.val_names
        return self.test_names

    @property
    def baseline_names(self) -> list[str]:
        """Rows of ``baseline_scores``: the configured baselines, then the aggregator."""
        return [*self.baselines, self.aggregator]

    def prior_inputs(self, params: Mapping[str, int] | None = None) -> PriorInputs:
        """What the static priors (:mod:`spider.priors`) know before a target arrives: the
        Copeland labels of the label cache, the fine-tuning bank (if any) and its tasks' pool
        datasets, the source domains (if given), ``params``."""
        self._resolve()
        cache = open_label_cache(self.label_cache_dir, self.num_label_tasks, self.label_config)
        bank = None if self.finetune_bank is None else open_bank(self.finetune_bank, self._model_names)
        return PriorInputs(list(self._model_names), cache.scores, None if bank is None else bank.accuracy,
                           dict(params or {}), None if bank is None else [s.datasets for s in bank.specs],
                           dict(self.source_domains.get("datasets", {})), dict(self.source_domains.get("models", {})))

    @property
    def model_dims(self) -> list[int]:
        """Feature dim of every PTM (model-index order); Dmax = max(model_dims)."""
        self._resolve()
        return list(self._model_dims)

    @property
    def general_dim(self) -> int:
        """Dg, the general encoder's feature dim (task token width)."""
        self._resolve()
        return self._general_dim

    def training_reference(self) -> TaskReference:
        """:func:`training_reference` of the tasks this datamodule trains on (each distinct task
        once: the ``mixed`` label source repeats the bank's)."""
        if self.train_dataset is None:
            self.setup("fit")
        return training_reference(self.store_root, self.general, list(dict.fromkeys(self.training_labels.spec_texts)))

    # ------------------------------------------------------------------ data

    def _val_target_specs(self) -> list[str]:
        """Each validation target's whole ``target_split`` as one training task (TaskSpec JSON)."""
        from spider.store import FeatureStore

        store = FeatureStore(self.store_root)
        return [TaskSpec.whole(d, store.entry(self.general, d, self.target_split).labels(), self.target_split).to_json()
                for d in self._val_names]

    def _eval_tasks(self) -> list[tuple[str, TaskSpec | None]]:
        if self.val_tasks_per_target == 0:
            return [(d, None) for d in self._target_names]
        from spider.store import FeatureStore

        store = FeatureStore(self.store_root)
        config = replace(self.task_config, min_datasets_per_task=1, max_datasets_per_task=1)
        tasks = []
        for dataset in self._target_names:
            index = ClassIndex.from_store(store, self.general, [dataset], self.target_split)
            sampler = TaskSampler(index, [dataset], config=config, num_tasks=self.val_tasks_per_target,
                                  seed=self.seed)
            tasks += [(dataset, sampler.task(EVAL_EPOCH, i)) for i in range(self.val_tasks_per_target)]
        return tasks

    def _target_scores(self) -> tuple[list[tuple[str, TaskSpec | None]], np.ndarray, np.ndarray]:
        tasks = self._eval_tasks()
        if self.labeller is not None:
            raw, aggregate = self.labeller.target_baseline_scores(
                self.store_root, self.label_cache_dir, tasks, self._model_names, self.baselines, self.aggregator,
                split=self.target_split, workers=self.label_workers, progress=self.progress,
                device=self.label_device)
            return tasks, raw, aggregate
        raw, missing = read_target_scores(self.store_root, self.label_cache_dir, tasks, self._model_names,
                                          self.baselines, self.target_split)
        if missing:
            raise LabelCacheError(f"{self.label_cache_dir}: no cached baseline scores of target "
                                  f"{next(iter(missing))!r}; prepare the data with a labeller first")
        aggregate = np.asarray(get_aggregator(self.aggregator)(raw).scores, dtype=np.float64) if len(tasks) else \
            np.zeros((0, len(self._model_names)))
        return tasks, raw, aggregate

    def prepare_data(self) -> None:
        """Build or resume the label cache and the targets' baseline scores (one process per node)."""
        self._resolve()
        if self.build_labels:
            self.labeller.build_label_cache(self.label_config, self.label_cache_dir, self.num_label_tasks,
                              workers=self.label_workers, progress=self.progress, device=self.label_device)
        else:
            open_label_cache(self.label_cache_dir, self.num_label_tasks, self.label_config)
        if self._target_names:
            self._target_scores()

    def setup(self, stage: str | None = None) -> None:
        self._resolve()
        if stage in (None, "fit") and self.train_dataset is None:
            cache = open_label_cache(self.label_cache_dir, self.num_label_tasks, self.label_config)
            bank = None if self.finetune_bank is None else open_bank(self.finetune_bank, cache.models)
            labels = training_labels(self.label_source, cache, bank, mixed_weight=self.mixed_weight,
                                     selected_members=self.selected_members)
            if self.val_targets_as_tasks:  # no validation targets: plus_targets says so (one line)
                truth = (self.ground_truth.matrix(self._val_names, self._model_names) if self._val_names
                         else np.zeros((0, len(self._model_names))))
                labels = plus_targets(labels, self._val_target_specs(), truth, self.val_targets_as_tasks)
            self.training_labels = labels
            self.train_dataset = LabelledTaskDataset(
                self.store_root, self.general, labels.spec_texts, labels.scores, self._model_names,
                self._model_dims, specific_models=self.specific_models, seed=self.seed, class_keep=self.class_keep)
        if stage in (None, "fit", "validate", "test") and self.eval_dataset is None and self._target_names:
            tasks, raw, aggregate = self._target_scores()
            truth = self.ground_truth.matrix(self._target_names, self._model_names)
            self.eval_dataset = EvalTaskDataset(
                self.store_root, self.general, self.target_split, tasks, self._target_names, self._model_names,
                self._model_dims, truth, raw, aggregate, specific_models=self.specific_models, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        sampler = EpochBankSampler(len(self.train_dataset), self.tasks_per_epoch, self.seed)
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=collate_episodes, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def eval_dataloader(self, stage: str) -> DataLoader | list:
        """Episodes of the ``stage`` targets ("val" or "test"); [] when there are none."""
        if self.eval_dataset is None:
            self.setup("validate")
        names = set(self.stage_names(stage))
        if self.eval_dataset is None or not names:
            return []
        subset = Subset(self.eval_dataset, [i for i, (d, _) in enumerate(self.eval_dataset.tasks) if d in names])
        # A one-replica DistributedSampler: Lightning leaves it in place, so every rank sees all targets.
        sampler = DistributedSampler(subset, num_replicas=1, rank=0, shuffle=False)
        return DataLoader(subset, batch_size=self.val_batch_size, sampler=sampler,
                          collate_fn=collate_episodes, num_workers=0)

    def val_dataloader(self) -> DataLoader | list:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self.eval_dataloader("test")

    def specific_tokens_for(self, batch: dict[str, torch.Tensor], models: torch.Tensor) -> torch.Tensor:
        """PTM-specific tokens for re-ranking an evaluation batch.

        Args:
            batch: an evaluation batch (uses ``task_index`` and the class padding of ``task_mask``).
            models: [B, k] int64 model indices.

        Returns:
            [B, k, C, Dmax] float32 on ``models``' device; class padding follows ``batch["task_mask"]``.
        """
        if self.eval_dataset is None:
            self.setup("validate")
        num_classes = batch["task_mask"].shape[1]
        max_dim = max(self._model_dims)
        index = batch["task_index"].tolist()
        out = torch.zeros(len(index), models.shape[1], num_classes, max_dim)
        for b, i in enumerate(index):
            for s, m in enumerate(models[b].tolist()):
                centres = self.eval_dataset.centres(i, self._model_names[m])
                out[b, s, : centres.shape[0], : centres.shape[1]] = centres
        return out.to(models.device)
