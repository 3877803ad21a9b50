"""TaskSpec, TaskConfig, TaskSampler and class_centres."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from spider.datamodules.tasks import ClassIndex, TaskConfig, TaskSampler, TaskSpec, check_disjoint
from spider.datamodules.tokens import class_centres, pad_last_dim
from spider.errors import ConfigError, SpiderError, StoreError
from spider.store import FeatureStore


def _index(sizes: dict[str, list[int]], seed: int = 0) -> ClassIndex:
    """A class index from class sizes per dataset (labels shuffled, as in real data)."""
    rng = np.random.default_rng(seed)
    labels = {d: rng.permutation(np.repeat(np.arange(len(s)), s)) for d, s in sizes.items()}
    return ClassIndex.from_labels(labels)


SIZES = {"a": [30, 30, 30, 3], "b": [40] * 10, "c": [12, 50, 7], "d": [20] * 5}


def _sampler(**kwargs) -> TaskSampler:
    config = kwargs.pop("config", TaskConfig(2, 3, 2, 12, 5, 20))
    return TaskSampler(_index(SIZES), config=config, **{"num_tasks": 40, "seed": 7, **kwargs})


# ------------------------------------------------------------------------------------ TaskSpec


def test_spec_roundtrips_through_json_and_hashes_by_value():
    spec = TaskSpec(classes=(("b", 3), ("a", 1), ("b", 0)), rows=((5, 9), (1, 2, 3), (7,)), split="train")
    again = TaskSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    assert json.loads(spec.to_json())["classes"] == [["b", 3], ["a", 1], ["b", 0]]
    assert spec.datasets == ("b", "a")
    np.testing.assert_array_equal(spec.labels(), [0, 0, 1, 1, 1, 2])
    groups = {d: (rows.tolist(), pos.tolist()) for d, rows, pos in spec.row_groups()}
    assert groups == {"b": ([5, 9, 7], [0, 1, 5]), "a": ([1, 2, 3], [2, 3, 4])}


def test_select_keeps_the_chosen_classes_with_their_rows():
    spec = TaskSpec(classes=(("b", 3), ("a", 1), ("b", 0)), rows=((5, 9), (1, 2, 3), (7,)), split="val")
    sub = spec.select([0, 2])
    assert sub == TaskSpec(classes=(("b", 3), ("b", 0)), rows=((5, 9), (7,)), split="val")
    np.testing.assert_array_equal(sub.labels(), [0, 0, 1])
    for bad in ([], [3], [1, 1], [-1]):
        with pytest.raises(SpiderError, match="select"):
            spec.select(bad)


def test_whole_is_every_class_with_every_row():
    spec = TaskSpec.whole("t", np.array([7, 3, 7, 3, 9]), split="train")
    assert spec.classes == (("t", 3), ("t", 7), ("t", 9)) and spec.rows == ((1, 3), (0, 2), (4,))
    assert spec.split == "train" and spec.labels().tolist() == [0, 0, 1, 1, 2]
    with pytest.raises(SpiderError, match="t/test has 1 class"):
        TaskSpec.whole("t", np.array([4, 4]), split="test")


def test_spec_rejects_inconsistent_or_malformed_input():
    with pytest.raises(SpiderError, match="2 classes but 1 row lists"):
        TaskSpec(classes=(("a", 0), ("a", 1)), rows=((1,),))
    with pytest.raises(SpiderError, match="at least one row"):
        TaskSpec(classes=(("a", 0),), rows=((),))
    with pytest.raises(SpiderError, match="malformed"):
        TaskSpec.from_dict({"classes": [["a", "x"]], "rows": [[1]]})


# ----------------------------------------------------------------------------------- TaskConfig


@pytest.mark.parametrize("kwargs, field", [
    (dict(min_datasets_per_task=3, max_datasets_per_task=2), "min_datasets_per_task"),
    (dict(min_classes_per_task=1), "min_classes_per_task"),
    (dict(min_samples_per_class=0), "min_samples_per_class"),
    (dict(max_samples_per_class=2.5), "min_samples_per_class"),
    (dict(min_class_size=0), "min_class_size"),
])
def test_config_rejects_bad_ranges_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as err:
        TaskConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_presets_and_from_mapping():
    paper = TaskConfig.preset("paper")
    assert (paper.min_datasets_per_task, paper.max_datasets_per_task, paper.max_classes_per_task,
            paper.max_samples_per_class) == (2, 4, 100, 50)
    assert TaskConfig.preset("few_shot", max_samples_per_class=5).max_samples_per_class == 5
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        TaskConfig.preset("nope")
    config = TaskConfig.from_mapping({"min_classes_per_task": 3, "batch_size": 16})
    assert config.min_classes_per_task == 3


# ---------------------------------------------------------------------------------- TaskSampler


def test_same_seed_same_tasks_and_epochs_differ():
    one, two = _sampler(), _sampler()
    assert [one[i] for i in range(len(one))] == [two[i] for i in range(len(two))]
    # a pure function of (seed, epoch, i): call order does not matter
    assert two.task(3, 5) == one.task(3, 5) and [one.task(0, i) for i in reversed(range(40))][::-1] == one.tasks(0)
    epoch0 = one.tasks(0)
    one.set_epoch(1)
    epoch1 = [one[i] for i in range(len(one))]
    assert epoch1 != epoch0 and sum(a == b for a, b in zip(epoch0, epoch1)) == 0
    assert _sampler(seed=8).tasks(0) != epoch0


def test_tasks_respect_the_configured_sizes_and_class_membership():
    config = TaskConfig(2, 3, 2, 12, 5, 20)
    sampler = _sampler(config=config)
    index = sampler.index
    for spec in sampler.tasks(0) + sampler.tasks(1):
        assert 2 <= len(spec.datasets) <= 3
        assert 2 <= spec.num_classes <= 12
        assert len(set(spec.classes)) == spec.num_classes
        counts = spec.counts()
        per_class = counts.max()
        assert 5 <= per_class <= 20
        for (dataset, c), rows in zip(spec.classes, spec.rows):
            available = index.rows[dataset][c]
            assert len(available) >= 5  # a class needs enough samples
            assert set(rows) <= set(available.tolist()) and list(rows) == sorted(set(rows))
            assert len(rows) == min(per_class, len(available))  # capped by what exists


def test_caps_classes_at_what_the_chosen_datasets_hold():
    sampler = _sampler(config=TaskConfig(1, 1, 100, 100, 1, 1), num_tasks=10)
    for spec in sampler.tasks(0):
        (dataset,) = spec.datasets
        assert spec.num_classes == len(SIZES[dataset])  # every class, capped at 100


def test_min_class_size_excludes_small_classes():
    sampler = _sampler(config=TaskConfig(1, 4, 2, 100, 1, 2, min_class_size=12), num_tasks=30)
    used = {pair for spec in sampler.tasks(0) for pair in spec.classes}
    assert ("a", 3) not in used and ("c", 2) not in used  # 3 and 7 samples
    assert {("c", 0), ("c", 1), ("a", 0)} <= used


def test_pool_target_overlap_is_rejected_with_one_line():
    with pytest.raises(ConfigError, match="'b'.*target") as err:
        TaskSampler(_index(SIZES), ["a", "b"], targets=["b", "x"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        check_disjoint(["a"], ["a"])


def test_pool_dataset_without_two_usable_classes_is_rejected():
    with pytest.raises(ConfigError, match="'c' has 1 class"):
        TaskSampler(_index(SIZES), ["b", "c"], config=TaskConfig(min_samples_per_class=20, max_samples_per_class=20))
    with pytest.raises(ConfigError, match="empty"):
        TaskSampler(_index(SIZES), [])


def test_distributed_shards_cover_the_epoch_with_equal_counts():
    sampler = _sampler(num_tasks=41)  # odd: the distributed sampler pads one rank
    sampler.set_epoch(2)
    shards = [[sampler[i] for i in DistributedSampler(sampler, num_replicas=2, rank=r, shuffle=False)]
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 21
    assert set(shards[0]) | set(shards[1]) == set(sampler.tasks(2))
    # an independent "process" (a fresh sampler) computes the same shard
    other = _sampler(num_tasks=41)
    other.set_epoch(2)
    assert [other[i] for i in DistributedSampler(other, num_replicas=2, rank=1, shuffle=False)] == shards[1]


def test_class_index_reads_the_general_encoders_labels(tmp_path):
    store = FeatureStore(tmp_path / "store")
    labels = np.array([2, 0, 2, 1, 0, 2])
    store.write("general", "ds", "train", features=np.zeros((6, 3), np.float32), labels=labels)
    store.write("general", "reg", "train", features=np.zeros((6, 3), np.float32),
                labels=np.zeros((6, 2), np.float32))
    index = ClassIndex.from_store(store, "general", ["ds"])
    assert {c: r.tolist() for c, r in index.rows["ds"].items()} == {0: [1, 4], 1: [3], 2: [0, 2, 5]}
    with pytest.raises(SpiderError, match="regression"):
        ClassIndex.from_store(store, "general", ["reg"])
    with pytest.raises(StoreError, match="missing_ds"):
        ClassIndex.from_store(store, "general", ["missing_ds"])


# -------------------------------------------------------------------------------- class_centres


def test_class_centres_are_per_class_means():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, 4, size=50)
    y[y == 2] = 3  # class 2 empty
    centres = class_centres(x, y, 5)
    assert centres.shape == (5, 6) and centres.dtype == torch.float32
    for c in range(5):
        expected = x[y == c].mean(0) if (y == c).any() else np.zeros(6)
        np.testing.assert_allclose(centres[c].numpy(), expected, rtol=1e-5, atol=1e-6)
    half = class_centres(torch.as_tensor(x).half(), torch.as_tensor(y), 5)
    assert half.dtype == torch.float32
    assert class_centres(x.astype(np.float64), y, 5).dtype == torch.float64


def test_class_centres_rejects_bad_input():
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(SpiderError, match=r"lie in \[0, 2\)"):
        class_centres(x, [0, 1, 2, 0], 2)
    with pytest.raises(SpiderError, match=r"labels must be \[N=4\]"):
        class_centres(x, [0, 1], 2)
    with pytest.raises(SpiderError, match="integer"):
        class_centres(x, [0.0, 1.0, 0.0, 1.0], 2)
    padded = pad_last_dim(torch.ones(2, 3), 5)
    assert padded.shape == (2, 5) and padded[:, 3:].abs().sum() == 0
