"""The mini model zoo recipe: which PTMs, which pool and target data, which general encoder.

A :class:`~spider.pipeline.recipe.ZooRecipe` (the framework: :mod:`spider.pipeline.recipe`) is pure
data; :mod:`spider.pipeline.build` turns it into a feature store, a ground-truth CSV and a label
cache. Two recipes are registered:

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
from typing import Any

import numpy as np

from spider.pipeline.recipe import (
    GENERAL_ID,
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    LabelSettings,
    PoolSpec,
    TargetSpec,
    ZooRecipe,
    register_recipe,
)
from spider.datamodules.tasks import TaskConfig
from spider.pipeline.bank import BankSettings
from spider.pipeline.finetune import FinetuneConfig
from spider.pipeline.pretrain import PretrainSpec

__all__ = ["get_recipe", "list_recipes", "minizoo", "tiny"]

OMNIGLOT_EVAL_CHARACTERS = 659  # characters of the Omniglot evaluation set (MANIFEST.md)
REAL_PTMS = (
    "cifar10_resnet20", "cifar10_resnet32", "cifar10_resnet44", "cifar10_resnet56",
    "mnist_cnn", "usps_cnn", "svhn_cnn",
    "fer2013_mini_xception", "fer2013_big_xception", "gender_mini_xception",
    "kdef_mini_xception", "kdef_tiny_xception",
)


# ----------------------------------------------------------------------------------- data views


def omniglot_tasks(count: int, ways: int = 20, seed: int = 0, **kwargs: Any) -> tuple[TargetSpec, ...]:
    """``count`` disjoint ``ways``-way tasks of Omniglot-evaluation characters (seeded)."""
    order = np.random.default_rng([seed, 20]).permutation(OMNIGLOT_EVAL_CHARACTERS)
    return tuple(
        TargetSpec(f"omniglot_eval{i}", "omniglot_evaluation", split="all",
                   classes=tuple(int(c) for c in np.sort(order[i * ways:(i + 1) * ways])), seed=seed, **kwargs)
        for i in range(count)
    )


# ---------------------------------------------------------------------------------------- models


# ---------------------------------------------------------------------------------------- labels


# ---------------------------------------------------------------------------------------- recipe


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
                     bank=BankSettings(num_tasks=40, max_per_class=12,
                                       finetune=FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=2)),
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


def get_recipe(name: str) -> ZooRecipe:
    return RECIPES.get(name)()


def list_recipes() -> list[str]:
    return RECIPES.list()
