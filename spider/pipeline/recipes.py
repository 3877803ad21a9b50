"""The mini model zoo recipe: which PTMs, which pool and target data, which general encoder.

A :class:`ZooRecipe` is pure data; :mod:`spider.pipeline.build` turns it into a feature store, a
ground-truth CSV and a label cache. Two recipes are registered:

* ``minizoo`` - the benchmark: the 12 real pre-trained models of ``weights/`` plus 8 timm models
  of 5 families pre-trained here on pool datasets (20 PTMs); a general encoder of a sixth
  family trained on the union of the pool datasets; pool MNIST digits 0-4, CIFAR-10 without the
  animals Animal-MNIST also has, Omniglot background; 6 targets (Fashion-MNIST, Animal-MNIST,
  USPS digits 5-9, three 20-way Omniglot-evaluation tasks).
* ``tiny`` - a few PTMs and samples, two targets; builds in seconds (tests, smoke runs).

Every class of a target is absent from the pool (digits 0-4 vs 5-9, Omniglot background vs
evaluation characters, CIFAR-10 animals shared with Animal-MNIST dropped), so training tasks never
contain a target class. PTMs themselves may have seen a target's domain (e.g. ``usps_cnn`` was
trained on all USPS digits): :attr:`TargetSpec.in_domain` records which.

Example:
    >>> recipe = get_recipe("minizoo")
    >>> [t.id for t in recipe.targets]
    ['fashion_mnist', 'animal_mnist', 'usps', 'omniglot_eval0', 'omniglot_eval1', 'omniglot_eval2']
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
from spider.registry import Registry
from spider.pipeline.bank import BankSettings
from spider.pipeline.finetune import FinetuneConfig
from spider.pipeline.pretrain import PretrainSpec, checkpoint_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.5,), (0.5,)
GENERAL_ID = "general"
OMNIGLOT_EVAL_CHARACTERS = 659  # characters of the Omniglot evaluation set (MANIFEST.md)
REAL_PTMS = (
    "cifar10_resnet20", "cifar10_resnet32", "cifar10_resnet44", "cifar10_resnet56",
    "mnist_cnn", "usps_cnn", "svhn_cnn",
    "fer2013_mini_xception", "fer2013_big_xception", "gender_mini_xception",
    "kdef_mini_xception", "kdef_tiny_xception",
)


# ----------------------------------------------------------------------------------- data views


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


def omniglot_tasks(count: int, ways: int = 20, seed: int = 0, **kwargs: Any) -> tuple[TargetSpec, ...]:
    """``count`` disjoint ``ways``-way tasks of Omniglot-evaluation characters (seeded)."""
    order = np.random.default_rng([seed, 20]).permutation(OMNIGLOT_EVAL_CHARACTERS)
    return tuple(
        TargetSpec(f"omniglot_eval{i}", "omniglot_evaluation", split="all",
                   classes=tuple(int(c) for c in np.sort(order[i * ways:(i + 1) * ways])), seed=seed, **kwargs)
        for i in range(count)
    )


# ---------------------------------------------------------------------------------------- models


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


# ---------------------------------------------------------------------------------------- labels


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


# ---------------------------------------------------------------------------------------- recipe


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
    bank: BankSettings = field(default_factory=lambda: BankSettings())
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

    def ptm_refs(self, checkpoints: str | Path) -> list[ModelRef]:
        return [zoo_ref(n) for n in self.real_ptms] + [timm_ref(s, checkpoints) for s in self.pretrained]

    def general_ref(self, checkpoints: str | Path) -> ModelRef:
        return timm_ref(self.general, checkpoints, GENERAL_ID)

    def all_pretrain_specs(self) -> list[PretrainSpec]:
        return list(self.pretrained) + [self.general] + [s for _, s in self.general_alternatives]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


RECIPES: Registry[Any] = Registry("zoo recipe")


def register_recipe(name: str):
    """Decorator registering a zero-argument function returning a :class:`ZooRecipe`."""
    return RECIPES.register(name)


def get_recipe(name: str) -> ZooRecipe:
    return RECIPES.get(name)()


def list_recipes() -> list[str]:
    return RECIPES.list()


def _timm(arch: str, source: str | tuple[str, ...], *, rgb: bool, size: int = 32, **kwargs: Any) -> PretrainSpec:
    sources = (source,) if isinstance(source, str) else tuple(source)
    tag = "+".join(sources).replace("omniglot_background", "omniglot")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if rgb else (GREY_MEAN, GREY_STD)
    return PretrainSpec(f"{arch}.{tag}", arch, sources, 3 if rgb else 1, size, mean, std, **kwargs)


# Classes of CIFAR-10 that are also Animal-MNIST classes (bird, cat, dog, horse) stay out of the pool.
CIFAR10_POOL_CLASSES = (0, 1, 4, 6, 8, 9)  # airplane, automobile, deer, frog, ship, truck
DIGITS_LOW, DIGITS_HIGH = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
# Validation classes (indices into the registered datasets' class lists).
TINY_IMAGENET_OBJECTS = (59, 80, 83, 109, 160, 168, 171, 174, 187, 191)  # abacus ... lemon, pizza
GTSRB_VAL_SIGNS = (1, 2, 12, 13, 14, 17, 25, 33, 35, 38)  # 30/50 km/h, priority, yield, stop, ...
CHARS74K_VAL_LETTERS = tuple(range(10, 20))  # A B C D E F G H J K


@register_recipe("minizoo")
def minizoo() -> ZooRecipe:
    pretrained = (
        _timm("test_resnet", "cifar10", rgb=True, epochs=10, flip=True),
        _timm("test_resnet", "omniglot_background", rgb=False, epochs=10, lr=3e-3),
        _timm("test_efficientnet", "mnist", rgb=False, epochs=2, max_per_source=20000),
        _timm("test_efficientnet", "cifar10", rgb=True, epochs=10, flip=True),
        _timm("test_convnext", "omniglot_background", rgb=False, epochs=10, lr=3e-3),
        _timm("test_convnext", "mnist", rgb=False, epochs=2, max_per_source=20000),
        _timm("test_vit", "cifar10", rgb=True, size=64, epochs=10, lr=1e-3, flip=True),
        _timm("test_mambaout", "mnist", rgb=False, epochs=2, max_per_source=20000),
    )
    general = PretrainSpec(GENERAL_ID, "test_byobnet", ("mnist", "cifar10", "omniglot_background"), 3, 32,
                           IMAGENET_MEAN, IMAGENET_STD, epochs=4, lr=3e-3, max_per_source=20000,
                           description="general encoder: a family absent from the zoo, trained on the "
                                       "union of the pool datasets (984 classes)")
    random_general = dataclasses.replace(general, id="general.random", epochs=0,
                                         description="same architecture, random initialisation")
    targets = (
        TargetSpec("fashion_mnist", "fashion_mnist", 50, 20, 50, test_split="test",
                   note="clothes; no PTM saw this domain"),
        TargetSpec("animal_mnist", "animal_mnist", 50, 20, 50, split="all",
                   note="animal silhouettes; CIFAR-10 PTMs saw photos of 4 of its classes"),
        TargetSpec("usps", "usps", 50, 20, 50, test_split="test", classes=DIGITS_HIGH,
                   in_domain=("usps_cnn", "mnist_cnn", "svhn_cnn", "test_efficientnet.mnist",
                              "test_convnext.mnist", "test_mambaout.mnist"),
                   note="USPS digits 5-9 (the pool holds MNIST digits 0-4 only)"),
    ) + omniglot_tasks(3, in_domain=("test_resnet.omniglot", "test_convnext.omniglot"),
                       train_per_class=10, val_per_class=4, test_per_class=6, epochs=4,
                       note="20 Omniglot-evaluation characters (alphabets unseen in the pool)")
    # Validation targets: new domains and classes (none in the pool or the test targets).
    val_targets = (
        TargetSpec("tiny_imagenet_objects", "tiny_imagenet", 25, 10, 10, test_split="test",
                   classes=TINY_IMAGENET_OBJECTS, note="10 Tiny-ImageNet objects and foods (photos)"),
        TargetSpec("gtsrb_signs", "gtsrb", 40, 20, 20, test_split="test", classes=GTSRB_VAL_SIGNS,
                   note="10 German traffic signs; no PTM saw this domain"),
        TargetSpec("chars74k_letters", "chars74k", 50, 20, 50, classes=CHARS74K_VAL_LETTERS,
                   note="capital letters A-K (no I) in computer fonts"),
        omniglot_tasks(4, in_domain=("test_resnet.omniglot", "test_convnext.omniglot"),
                       train_per_class=10, val_per_class=4, test_per_class=6, epochs=4,
                       note="20 more Omniglot-evaluation characters")[3],
    )
    pool = (
        PoolSpec("mnist", "mnist", classes=DIGITS_LOW, per_class=200, note="MNIST digits 0-4"),
        PoolSpec("cifar10", "cifar10", classes=CIFAR10_POOL_CLASSES, per_class=200,
                 note="CIFAR-10 without bird, cat, dog, horse (Animal-MNIST classes)"),
        PoolSpec("omniglot_background", "omniglot_background", split="all", max_classes=400,
                 note="400 Omniglot-background characters x 20 drawings"),
    )
    return ZooRecipe("minizoo", REAL_PTMS, pretrained, general, pool, targets,
                     finetune=FinetuneConfig(), labels=LabelSettings(),
                     general_alternatives=(("random", random_general),), val_targets=val_targets,
                     description="20 PTMs (12 real + 8 timm pre-trained here), 3 pool datasets, "
                                 "4 validation and 6 test targets")


@register_recipe("tiny")
def tiny() -> ZooRecipe:
    pretrained = (_timm("test_vit", "mnist", rgb=False, epochs=1, max_per_source=256, batch_size=64),)
    general = PretrainSpec(GENERAL_ID, "test_convnext", ("mnist", "omniglot_background"), 1, 32, GREY_MEAN,
                           GREY_STD, epochs=1, max_per_source=256, batch_size=64)
    targets = (
        TargetSpec("usps", "usps", 6, 3, 6, test_split="test", classes=DIGITS_HIGH,
                   in_domain=("usps_cnn", "mnist_cnn", "test_vit.mnist")),
    ) + omniglot_tasks(1, ways=5, train_per_class=5, val_per_class=2, test_per_class=3)
    val_targets = omniglot_tasks(2, ways=5, train_per_class=5, val_per_class=2, test_per_class=3)[1:]
    pool = (
        PoolSpec("mnist", "mnist", classes=DIGITS_LOW, per_class=12),
        PoolSpec("omniglot_background", "omniglot_background", split="all", max_classes=8, per_class=12),
    )
    labels = LabelSettings(num_label_tasks=4, shard_size=4, task=TaskConfig(
        min_datasets_per_task=1, max_datasets_per_task=3, min_classes_per_task=2, max_classes_per_task=6,
        min_samples_per_class=3, max_samples_per_class=6))
    finetune = FinetuneConfig(epochs=1, batch_size=16)
    random_general = dataclasses.replace(general, id="general.random", epochs=0)
    bank = BankSettings(num_tasks=2, finetune=FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=1))
    return ZooRecipe("tiny", ("mnist_cnn", "usps_cnn"), pretrained, general, pool, targets,
                     finetune=finetune, labels=labels, general_alternatives=(("random", random_general),),
                     extract_batch_size=64, max_workers=1, val_targets=val_targets, bank=bank,
                     description="3 PTMs, 2 pool datasets, 1 validation and 2 test targets (tests)")
