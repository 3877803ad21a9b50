"""Shared fixtures of the datamodule tests (tasks, labels, episodes): a tiny synthetic zoo."""

from __future__ import annotations

from pathlib import Path

from spider.datamodules.tasks import TaskConfig
from spider.synthetic import SyntheticZoo, make_synthetic_zoo

# Cheap label baselines for cache mechanics (the default set is exercised in test_episodes).
FAST_BASELINES = ("leep", "nce")
TINY_TASKS = TaskConfig(min_datasets_per_task=2, max_datasets_per_task=3, min_classes_per_task=2,
                        max_classes_per_task=8, min_samples_per_class=2, max_samples_per_class=6)


def tiny_zoo(root: Path) -> SyntheticZoo:
    """4 PTMs (dims 8/12), 3 pool datasets x 6 classes, 2 targets x 4 classes, 10 samples per class."""
    return make_synthetic_zoo(root, num_models=4, pool_datasets=3, classes_per_pool=6, targets=2,
                              classes_per_target=4, samples_per_class=10, general_dim=8, model_dims=(8, 12),
                              latent_dim=8, num_factors=2, source_classes=10, seed=0)
