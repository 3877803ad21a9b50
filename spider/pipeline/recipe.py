"""The zoo-recipe framework: what a recipe declares and how its parts load (pure data + loaders).

A :class:`ZooRecipe` names the PTMs (:class:`ModelRef`, pre-trained :class:`PretrainSpec`), the pool
and target data (:class:`PoolSpec`, :class:`TargetSpec`, loaded as :class:`ViewData`), the label
settings (:class:`LabelSettings`) and the fine-tuning bank; :mod:`spider.pipeline.build` turns it
into a feature store, a ground-truth CSV and a label cache. The recipes themselves are in
:mod:`spider.pipeline.recipes` (``get_recipe``, ``list_recipes``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spider.baselines.batch import DEFAULT_BASELINES
from spider.datamodules.tasks import TaskConfig
from spider.errors import SpiderError
from spider.pipeline.bank import BankSettings
from spider.pipeline.finetune import FinetuneConfig
from spider.pipeline.pretrain import PretrainSpec, checkpoint_path
from spider.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


GREY_MEAN, GREY_STD = (0.5,), (0.5,)


GENERAL_ID = "general"


@dataclass(frozen=True)
class ViewData:
    """Images of one view, in a fixed order: row i is the same image for every model.

    ``images`` uint8 ``[N, H, W]`` or ``[N, H, W, 3]``; ``labels`` int64 ``[N]`` in
    ``range(len(class_names))``; ``sample_ids`` int64 ``[N]`` rows of the source split.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    sample_ids: np.ndarray
    description: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def source(self):
        """This view as a :class:`spider.pipeline.extract.ArraySource`."""
        from spider.pipeline.extract import ArraySource

        return ArraySource(self.images, self.labels, self.class_names, self.sample_ids, self.description)


def _rng(seed: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(salt.encode())])


def _pick_classes(num_classes: int, classes: tuple[int, ...] | None, max_classes: int | None,
                  rng: np.random.Generator) -> np.ndarray:
    kept = np.arange(num_classes) if classes is None else np.asarray(classes, dtype=np.int64)
    if classes is not None and (kept.min() < 0 or kept.max() >= num_classes):
        raise SpiderError(f"classes {classes}: out of range for {num_classes} source classes")
    if max_classes is not None and len(kept) > max_classes:
        kept = np.sort(rng.choice(kept, max_classes, replace=False))
    return kept


def _relabel(source_labels: np.ndarray, rows: np.ndarray, kept: np.ndarray) -> np.ndarray:
    index = {int(c): i for i, c in enumerate(kept)}
    return np.asarray([index[int(c)] for c in source_labels[rows]], dtype=np.int64)


@dataclass(frozen=True)
class PoolSpec:
    """A pool dataset: training tasks are drawn from it (classes disjoint from every target).

    Keeps the source classes ``classes`` (all when None; then at most ``max_classes`` of them,
    seeded) and at most ``per_class`` images of each (seeded), relabelled ``0..k-1``.
    """

    id: str
    source: str
    split: str = "train"
    classes: tuple[int, ...] | None = None
    max_classes: int | None = None
    per_class: int | None = None
    seed: int = 0
    note: str = ""

    def load(self, data_dir: str | Path | None = None) -> ViewData:
        from spider.zoo.datasets import load_dataset

        data = load_dataset(self.source, self.split, data_dir=data_dir)
        rng = _rng(self.seed, self.id)
        kept = _pick_classes(len(data.class_names), self.classes, self.max_classes, rng)
        rows = []
        for c in kept:
            found = np.flatnonzero(data.labels == c)
            if self.per_class is not None and len(found) > self.per_class:
                found = np.sort(rng.choice(found, self.per_class, replace=False))
            rows.append(found)
        rows = np.sort(np.concatenate(rows))
        names = tuple(data.class_names[int(c)] for c in kept)
        return ViewData(self.id, data.images[rows], _relabel(data.labels, rows, kept), names,
                        rows.astype(np.int64), f"{self.source}:{self.split} ({len(kept)} classes)")


@dataclass(frozen=True)
class TargetSpec:
    """A target dataset with ground truth: disjoint train/val/test draws per class.

    ``train`` is the labelled data a user would hand to the ranker (it is what the store holds)
    and what fine-tuning trains on; ``val`` selects the learning rate; ``test`` gives the
    ground-truth accuracy. With ``test_split`` (e.g. ``"test"``) the test images come from the
    source's official test split, else all three come from ``split``. ``in_domain`` lists PTMs
    pre-trained on this target's image domain; ``epochs`` overrides the fine-tuning epochs.
    """

    id: str
    source: str
    train_per_class: int
    val_per_class: int
    test_per_class: int
    split: str = "train"
    test_split: str | None = None
    classes: tuple[int, ...] | None = None
    seed: int = 0
    in_domain: tuple[str, ...] = ()
    epochs: int | None = None
    note: str = ""

    def load(self, data_dir: str | Path | None = None) -> dict[str, ViewData]:
        """``{"train", "val", "test"}`` views (class ids ``0..k-1`` in ``classes`` order)."""
        from spider.zoo.datasets import load_dataset

        data = load_dataset(self.source, self.split, data_dir=data_dir)
        test_data = load_dataset(self.source, self.test_split, data_dir=data_dir) if self.test_split else None
        rng = _rng(self.seed, self.id)
        kept = _pick_classes(len(data.class_names), self.classes, None, rng)
        take = {"train": [], "val": [], "test": []}
        for c in kept:
            rows = rng.permutation(np.flatnonzero(data.labels == c))
            need = self.train_per_class + self.val_per_class + (0 if test_data is not None else self.test_per_class)
            if len(rows) < need:
                raise SpiderError(f"target {self.id!r}: class {data.class_names[int(c)]!r} has {len(rows)} "
                                  f"images in {self.source}:{self.split}, the recipe needs {need}")
            take["train"].append(rows[:self.train_per_class])
            take["val"].append(rows[self.train_per_class:self.train_per_class + self.val_per_class])
            if test_data is None:
                take["test"].append(rows[self.train_per_class + self.val_per_class:need])
            else:
                test_rows = rng.permutation(np.flatnonzero(test_data.labels == c))
                take["test"].append(test_rows[:self.test_per_class])
        names = tuple(data.class_names[int(c)] for c in kept)
        views = {}
        for part, chunks in take.items():
            source = test_data if (part == "test" and test_data is not None) else data
            rows = np.sort(np.concatenate(chunks))
            split = self.test_split if (part == "test" and test_data is not None) else self.split
            views[part] = ViewData(self.id, source.images[rows], _relabel(source.labels, rows, kept), names,
                                   rows.astype(np.int64), f"{self.source}:{split} ({part}, {len(kept)} classes)")
        return views


@dataclass(frozen=True)
class ModelRef:
    """How to load one PTM or encoder with its native input size and normalisation.

    ``model`` is a :mod:`spider.zoo` model (``checkpoint=None``: its registered real weights) or
    a timm architecture with a local ``checkpoint``; ``in_chans``/``input_size``/``mean``/``std``
    are given for timm models (zoo models carry their own).
    """

    id: str
    model: str
    kind: str  # "zoo" or "timm"
    checkpoint: str | None = None
    in_chans: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights: str = ""  # what identifies the weights (zoo file, or hash of the pre-training spec)
    provenance: str = ""

    def load(self, data_dir: str | Path | None = None):
        """A :class:`spider.pipeline.extract.PreparedModel` in eval mode."""
        from spider.pipeline.extract import load_model

        if self.kind == "zoo":
            return load_model(self.model, data_dir=data_dir)
        return load_model(self.model, checkpoint=self.checkpoint, in_chans=self.in_chans,
                          input_size=self.input_size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def zoo_ref(name: str) -> ModelRef:
    from spider.zoo import get_zoo_model_info

    info = get_zoo_model_info(name)
    return ModelRef(name, name, "zoo", None, info.in_chans, tuple(info.input_size), tuple(info.mean),
                    tuple(info.std), weights=info.checkpoint,
                    provenance=f"real weights {info.checkpoint} (trained on {info.source})")


def timm_ref(spec: PretrainSpec, checkpoints: str | Path, model_id: str | None = None) -> ModelRef:
    return ModelRef(model_id or spec.id, spec.arch, "timm", str(checkpoint_path(checkpoints, spec)), spec.in_chans,
                    (spec.input_size, spec.input_size), tuple(spec.mean), tuple(spec.std), weights=spec.hash,
                    provenance=f"timm {spec.arch} pre-trained here on {'+'.join(spec.sources)} "
                               f"({spec.epochs} epochs)")


@dataclass(frozen=True)
class LabelSettings:
    """Label cache of training tasks (keys as in :class:`spider.config.DataConfig`)."""

    num_label_tasks: int = 256
    task: TaskConfig = field(default_factory=lambda: TaskConfig(
        min_datasets_per_task=1, max_datasets_per_task=3, min_classes_per_task=5, max_classes_per_task=30,
        min_samples_per_class=10, max_samples_per_class=30))
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    aggregator: str = "copeland"
    seed: int = 0
    shard_size: int = 64


@dataclass(frozen=True)
class ZooRecipe:
    """Everything :func:`spider.pipeline.build.build_zoo` needs to build one zoo."""

    name: str
    real_ptms: tuple[str, ...]
    pretrained: tuple[PretrainSpec, ...]
    general: PretrainSpec
    pool: tuple[PoolSpec, ...]
    # Test targets: reported once, never used to decide anything.
    targets: tuple[TargetSpec, ...]
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    labels: LabelSettings = field(default_factory=LabelSettings)
    # Ablation hook: other general encoders, each stored as ``general`` in a store of its own
    # whose PTM folders link to the main store's (``<out>/alternatives/<name>/store``).
    general_alternatives: tuple[tuple[str, PretrainSpec], ...] = ()
    extract_batch_size: int = 256
    # Validation targets: every decision (early stop, checkpoint, sweep, ablation winner) is made
    # on these; like the test targets, their classes are absent from the pool.
    val_targets: tuple[TargetSpec, ...] = ()
    # Fine-tuning bank: real fine-tuning of every PTM on the first tasks of the label cache.
    bank: BankSettings = field(default_factory=BankSettings)
    # Upper bound on worker processes: for a tiny zoo their start-up costs more than they save.
    max_workers: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        ids = self.ptm_ids()
        if len(set(ids)) != len(ids):
            raise SpiderError(f"recipe {self.name!r}: duplicate PTM ids")
        if GENERAL_ID in ids:
            raise SpiderError(f"recipe {self.name!r}: a PTM cannot be called {GENERAL_ID!r}")
        datasets = [p.id for p in self.pool] + [t.id for t in self.all_targets]
        if len(set(datasets)) != len(datasets):
            raise SpiderError(f"recipe {self.name!r}: duplicate dataset ids")
        unknown = sorted({d for t in self.all_targets for d in t.in_domain} - set(ids))
        if unknown:
            raise SpiderError(f"recipe {self.name!r}: in_domain names unknown PTMs {unknown}")

    @property
    def all_targets(self) -> tuple[TargetSpec, ...]:
        """Validation then test targets: everything that gets fine-tuning ground truth."""
        return tuple(self.val_targets) + tuple(self.targets)

    def ptm_ids(self) -> list[str]:
        return list(self.real_ptms) + [s.id for s in self.pretrained]

    def ptm_domains(self) -> dict[str, tuple[str, ...]]:
        """``{ptm id: source domains}`` (:mod:`spider.zoo.domains`): a real PTM's training set, a
        pre-trained one's sources (several for a generalist trained on a union)."""
        from spider.zoo import get_zoo_model_info
        from spider.zoo.domains import source_domains

        domains = {name: source_domains([get_zoo_model_info(name).source]) for name in self.real_ptms}
        return {**domains, **{spec.id: source_domains(spec.sources) for spec in self.pretrained}}

    def ptm_refs(self, checkpoints: str | Path) -> list[ModelRef]:
        return [zoo_ref(n) for n in self.real_ptms] + [timm_ref(s, checkpoints) for s in self.pretrained]

    def general_ref(self, checkpoints: str | Path) -> ModelRef:
        return timm_ref(self.general, checkpoints, GENERAL_ID)

    def all_pretrain_specs(self) -> list[PretrainSpec]:
        return list(self.pretrained) + [self.general] + [s for _, s in self.general_alternatives]

    def to_dict(self) -> dict[str, Any]:
        data = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        for spec in [*data["pretrained"], data["general"], *(s for _, s in data["general_alternatives"])]:
            if not spec["source_classes"]:  # as PretrainSpec.to_dict: earlier recipes keep their hash
                del spec["source_classes"]
        return data

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


RECIPES: Registry[Any] = Registry("zoo recipe")


def register_recipe(name: str):
    """Decorator registering a zero-argument function returning a :class:`ZooRecipe`."""
    return RECIPES.register(name)
