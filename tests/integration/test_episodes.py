"""EpisodeDataModule: batches, masks, determinism, sharding, evaluation data."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from helpers.datamodules_support import FAST_BASELINES, tiny_zoo
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from spider.aggregate import copeland
from spider.datamodules.episode_datasets import EpochBankSampler, collate_episodes, epoch_order, kept_classes
from spider.datamodules.episodes import EpisodeDataModule
from spider.datamodules.ground_truth_csv import read_ground_truth
from spider.datamodules.tasks import TaskConfig
from spider.baselines.batch import DEFAULT_BASELINES
from spider.datamodules.label_cache import open_label_cache, task_array
from spider.pipeline.labelling import LABELLER
from spider.datamodules.tokens import class_centres
from spider.errors import ConfigError
from spider.store import FeatureStore

TASKS = dict(min_datasets_per_task=2, max_datasets_per_task=3, max_classes_per_task=8, max_samples_per_class=6)


def _tasks(**overrides) -> TaskConfig:
    return TaskConfig(**{**TASKS, **overrides})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory.mktemp("zoo"))


def _datamodule(zoo, cache, **kwargs) -> EpisodeDataModule:
    options = dict(baselines=FAST_BASELINES, num_label_tasks=12, shard_size=8, batch_size=5, progress=False,
                   task=_tasks(), labeller=LABELLER)
    return EpisodeDataModule(zoo.store_root, cache, zoo.ground_truth_csv, **{**options, **kwargs})


@pytest.fixture(scope="module")
def ready(zoo, tmp_path_factory):
    """A prepared datamodule with PTM-specific extras (S=2)."""
    dm = _datamodule(zoo, tmp_path_factory.mktemp("labels"), specific_models=2)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------- samplers


def test_epoch_order_is_a_deterministic_reshuffle_of_the_bank():
    sampler = EpochBankSampler(10, seed=3)
    first = list(sampler)
    assert [j for _, j in first] == epoch_order(3, 0, 10, 10).tolist()
    assert sorted(j for _, j in first) == list(range(10)) and {e for e, _ in first} == {0}
    assert list(EpochBankSampler(10, seed=3)) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert {e for e, _ in second} == {1} and [j for _, j in second] != [j for _, j in first]
    long = epoch_order(3, 0, 4, 10)  # more draws per epoch than bank tasks: whole permutations first
    assert sorted(long[:8].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3] and len(long) == 10


@pytest.mark.parametrize("bank, world", [(11, 2), (12, 3)])
def test_lightning_distributed_wrapper_shards_keys_with_equal_counts(bank, world):
    shards = []
    for rank in range(world):
        wrapper = DistributedSamplerWrapper(EpochBankSampler(bank, seed=5), num_replicas=world, rank=rank,
                                            shuffle=False)
        wrapper.set_epoch(4)  # forwarded to our sampler, as Lightning does every epoch
        shards.append(list(wrapper))
    assert len({len(s) for s in shards}) == 1  # no rank waits for another's extra batch
    keys = [key for shard in shards for key in shard]
    assert {e for e, _ in keys} == {4}
    assert {j for _, j in keys} == set(range(bank))


# -------------------------------------------------------------------------------- collate


def test_collate_pads_classes_with_explicit_masks():
    items = [{"task_tokens": torch.ones(c, 3), "target_scores": torch.full((2,), float(c)),
              "specific_tokens": torch.ones(1, c, 4)} for c in (2, 5)]
    batch = collate_episodes(items)
    assert batch["task_tokens"].shape == (2, 5, 3) and batch["specific_tokens"].shape == (2, 1, 5, 4)
    assert batch["task_mask"].tolist() == [[True, True, False, False, False], [True] * 5]
    assert batch["task_tokens"][0, 2:].abs().sum() == 0 and batch["specific_tokens"][0, :, 2:].abs().sum() == 0
    assert batch["target_scores"].tolist() == [[2.0, 2.0], [5.0, 5.0]]


# ------------------------------------------------------------------------------ datamodule


def test_names_and_dims_come_from_the_store_and_config(zoo, ready):
    assert ready.model_names == list(zoo.models) and ready.num_models == 4
    assert ready.target_names == list(zoo.target_datasets)
    assert ready.model_dims == [8, 12, 8, 12] and ready.general_dim == 8
    assert ready.baseline_names == [*FAST_BASELINES, "copeland"]
    assert ready.label_config.pool == tuple(zoo.pool_datasets)


def test_train_batches_hold_tokens_labels_and_specific_extras(zoo, ready):
    cache = open_label_cache(ready.label_cache_dir, 12)
    store = FeatureStore(zoo.store_root)
    loader = ready.train_dataloader()
    loader.sampler.set_epoch(0)
    batch = next(iter(loader))
    keys = [j for _, j in list(loader.sampler)[:5]]
    assert batch["task_tokens"].shape[:1] == (5,) and batch["task_tokens"].shape[2] == 8
    assert batch["specific_tokens"].shape == (5, 2, batch["task_mask"].shape[1], 12)
    for b, j in enumerate(keys):
        spec = cache.specs[j]
        c = spec.num_classes
        assert batch["task_mask"][b].sum() == c and batch["task_mask"][b, :c].all()
        expected = class_centres(task_array(store, "general", spec), spec.labels(), c)
        torch.testing.assert_close(batch["task_tokens"][b, :c], expected)
        assert batch["task_tokens"][b, c:].abs().sum() == 0
        np.testing.assert_allclose(batch["target_scores"][b].numpy(), cache.scores[j], rtol=1e-6)
        assert batch["model_mask"][b].all()
        models = batch["specific_models"][b].tolist()
        assert batch["specific_mask"][b].all() and len(set(models)) == 2
        for s, m in enumerate(models):
            dim = ready.model_dims[m]
            own = class_centres(task_array(store, zoo.models[m], spec), spec.labels(), c)
            torch.testing.assert_close(batch["specific_tokens"][b, s, :c, :dim], own)
            assert batch["specific_tokens"][b, s, :, dim:].abs().sum() == 0
            assert batch["specific_tokens"][b, s, c:].abs().sum() == 0


def test_same_seed_same_batches_and_epochs_reshuffle(zoo, ready, tmp_path):
    twin = _datamodule(zoo, ready.label_cache_dir, specific_models=2, build_labels=False)
    twin.prepare_data()  # only checks the cache
    twin.setup("fit")

    def epoch(dm, e):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(e)
        return list(loader)

    a, b = epoch(ready, 0), epoch(twin, 0)
    assert len(a) == 3  # 12 tasks, batches of 5: the last one short
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    c = epoch(ready, 1)
    assert not all(torch.equal(x["target_scores"], y["target_scores"]) for x, y in zip(a, c))
    assert sorted(torch.cat([x["target_scores"] for x in a]).sum(1).tolist()) == \
        sorted(torch.cat([x["target_scores"] for x in c]).sum(1).tolist())  # same bank, new order


def test_kept_classes_draw_a_seeded_subset_of_at_least_the_fraction():
    sizes = set()
    for epoch in range(40):
        kept = kept_classes(7, epoch, 3, 10, 0.5)
        assert kept.tolist() == sorted(set(kept.tolist())) and 5 <= len(kept) <= 10 and kept.max() < 10
        assert kept.tolist() == kept_classes(7, epoch, 3, 10, 0.5).tolist()  # a pure function
        sizes.add(len(kept))
    assert len(sizes) > 3  # the count varies, not only the members
    assert kept_classes(7, 0, 3, 10, 1.0).tolist() == list(range(10))
    assert kept_classes(7, 0, 3, 2, 0.1).tolist() == [0, 1]
    assert min(len(kept_classes(7, e, 0, 6, 0.01)) for e in range(50)) == 2  # never a one-class task


def test_class_keep_builds_tokens_from_a_class_subset_and_keeps_the_labels(zoo, ready):
    cache = open_label_cache(ready.label_cache_dir, 12)
    store = FeatureStore(zoo.store_root)
    dm = _datamodule(zoo, ready.label_cache_dir, specific_models=2, build_labels=False, class_keep=0.3)
    dm.prepare_data()
    dm.setup("fit")
    dataset, subsets = dm.train_dataset, 0
    for epoch in (0, 1):
        for j in range(12):
            spec = cache.specs[j]
            kept = kept_classes(0, epoch, j, spec.num_classes, 0.3)
            item = dataset[(epoch, j)]
            sub = spec.select(kept)
            expected = class_centres(task_array(store, "general", sub), sub.labels(), len(kept))
            torch.testing.assert_close(item["task_tokens"], expected)
            np.testing.assert_allclose(item["target_scores"].numpy(), cache.scores[j], rtol=1e-6)
            assert item["specific_tokens"].shape[1] == len(kept)  # the re-ranker sees the same classes
            subsets += len(kept) < spec.num_classes
    assert subsets > 0


@pytest.mark.parametrize("value", [0.0, 1.5, float("nan")])
def test_class_keep_outside_0_1_is_refused(zoo, tmp_path, value):
    with pytest.raises(ConfigError, match="class_keep"):
        _datamodule(zoo, tmp_path, class_keep=value)


def test_validation_batches_carry_truth_and_baseline_scores(zoo, ready):
    assert ready.test_dataloader().sampler.num_replicas == 1  # replicated on every rank, never sharded
    batch = next(iter(ready.test_dataloader()))
    truth = read_ground_truth(zoo.ground_truth_csv).matrix(zoo.target_datasets, zoo.models)
    assert batch["target_index"].tolist() == [0, 1]
    np.testing.assert_allclose(batch["truth"].numpy(), truth, rtol=1e-6)
    assert batch["truth_mask"].all()
    scores = batch["baseline_scores"]
    assert scores.shape == (2, len(FAST_BASELINES) + 1, 4)
    np.testing.assert_allclose(scores[:, -1].numpy(), copeland(scores[:, :-1].double().numpy()).scores)
    torch.testing.assert_close(batch["target_scores"], scores[:, -1])
    store = FeatureStore(zoo.store_root)
    entry = store.entry("general", zoo.target_datasets[1])
    centres = class_centres(entry.features(), entry.labels(), 4)
    torch.testing.assert_close(batch["task_tokens"][1], centres)
    top = torch.tensor([[3, 0], [1, 2]])
    specific = ready.specific_tokens_for(batch, top)
    assert specific.shape == (2, 2, 4, 12)
    own = store.entry(zoo.models[1], zoo.target_datasets[1])
    torch.testing.assert_close(specific[1, 0, :, :12], class_centres(own.features(), own.labels(), 4))


def test_sampled_validation_tasks_per_target(zoo, tmp_path):
    dm = _datamodule(zoo, tmp_path / "labels", num_label_tasks=2, val_tasks_per_target=3, val_batch_size=10,
                     task=_tasks(max_classes_per_task=3))
    dm.prepare_data()
    dm.setup("validate")
    assert dm.val_dataloader() == []  # no validation targets given: no validation data
    batch = next(iter(dm.test_dataloader()))
    assert batch["target_index"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["task_mask"].sum(1).max() <= 3
    assert torch.equal(batch["truth"][0], batch["truth"][2])


def test_overlap_and_unknown_targets_are_rejected(zoo, tmp_path):
    with pytest.raises(ConfigError, match="also a target"):
        _datamodule(zoo, tmp_path, pool_datasets=[zoo.pool_datasets[0], zoo.target_datasets[0]]).model_names
    with pytest.raises(ConfigError, match="no rows in"):
        _datamodule(zoo, tmp_path, test_datasets=[zoo.pool_datasets[0]]).model_names
    with pytest.raises(ConfigError, match="both a validation and a test target"):
        _datamodule(zoo, tmp_path, val_datasets=zoo.target_datasets[:1], test_datasets=zoo.target_datasets).model_names


def test_val_and_test_loaders_hold_their_own_targets(zoo, tmp_path):
    val, test = zoo.target_datasets[:1], zoo.target_datasets[1:]
    dm = _datamodule(zoo, tmp_path / "labels", num_label_tasks=2, val_datasets=val)
    assert dm.val_names == val and dm.test_names == test and dm.target_names == val + test
    dm.prepare_data()
    names = {stage: {dm.target_names[int(i)] for batch in loader for i in batch["target_index"]}
             for stage, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()))}
    assert names == {"val": set(val), "test": set(test)}
    with pytest.raises(ConfigError, match="batch_size"):
        _datamodule(zoo, tmp_path, batch_size=0)


class _Recorder(L.LightningModule):
    """Records the label rows it trains on, to see Lightning drive the sampler's epochs."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[float]] = []

    def training_step(self, batch, _):
        self.seen.append(batch["target_scores"].sum(1).tolist())
        return (self.weight * batch["task_tokens"].mean()).sum()

    def validation_step(self, batch, _):
        assert batch["baseline_scores"].shape[1] == len(DEFAULT_BASELINES) + 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_epochs_with_the_default_baselines(zoo, tmp_path):
    dm = _datamodule(zoo, tmp_path / "labels", baselines=DEFAULT_BASELINES, num_label_tasks=6, batch_size=3)
    module = _Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert len(module.seen) == 4
    cache = open_label_cache(tmp_path / "labels", 6)
    assert np.isfinite(cache.raw).all()
    expected = [cache.scores[epoch_order(0, e, 6, 6)].sum(1) for e in (0, 1)]
    for e in (0, 1):
        got = np.concatenate(module.seen[2 * e: 2 * e + 2])
        np.testing.assert_allclose(got, expected[e], rtol=1e-6)


def test_without_a_labeller_the_datamodule_only_reads_finished_caches(zoo, ready, tmp_path):
    from spider.datamodules.label_cache import LabelCacheError
    from spider.errors import ConfigError

    with pytest.raises(ConfigError, match="build_labels"):
        _datamodule(zoo, tmp_path / "new", labeller=None)
    reader = _datamodule(zoo, ready.label_cache_dir, specific_models=2, build_labels=False, labeller=None)
    reader.prepare_data()
    reader.setup("fit")
    assert reader.training_labels.scores.shape == ready.training_labels.scores.shape
    empty = _datamodule(zoo, tmp_path / "none", build_labels=False, labeller=None)
    with pytest.raises(LabelCacheError, match="no label cache"):
        empty.prepare_data()


# ------------------------------------------------------------------------ validation targets as tasks


def test_val_targets_as_tasks_appends_each_whole_target_labelled_by_its_truth(zoo, ready):
    val, test = zoo.target_datasets[:1], zoo.target_datasets[1:]
    dm = _datamodule(zoo, ready.label_cache_dir, build_labels=False, val_datasets=val, test_datasets=test,
                     val_targets_as_tasks=2)
    dm.prepare_data()
    dm.setup("fit")
    store = FeatureStore(zoo.store_root)
    entry = store.entry("general", val[0], "train")
    labels = np.unique(entry.labels(), return_inverse=True)[1]
    truth = read_ground_truth(zoo.ground_truth_csv).matrix(val, dm.model_names)[0]
    assert len(dm.train_dataset) == 12 + 2  # the bank, then the target twice
    for j in (12, 13):
        item = dm.train_dataset[(0, j)]
        torch.testing.assert_close(item["task_tokens"], class_centres(entry.features(), labels, labels.max() + 1).float())
        np.testing.assert_allclose(item["target_scores"].numpy(), truth, rtol=1e-6)
        assert item["model_mask"].all()
    # Targets trained on judge nothing: no validation stage; the test stage is unchanged.
    assert dm.stage_names("val") == [] and dm.val_dataloader() == [] and dm.val_names == val
    assert next(iter(dm.test_dataloader()))["target_index"].tolist() == [1]


def test_val_targets_as_tasks_needs_validation_targets_and_a_count(zoo, ready, tmp_path):
    with pytest.raises(ConfigError, match="val_targets_as_tasks: expected >= 0"):
        _datamodule(zoo, tmp_path, val_targets_as_tasks=-1)
    for ground_truth in (zoo.ground_truth_csv, None):  # no validation targets, with or without a ground truth
        dm = EpisodeDataModule(zoo.store_root, ready.label_cache_dir, ground_truth, baselines=FAST_BASELINES,
                               num_label_tasks=12, shard_size=8, task=_tasks(), build_labels=False, progress=False,
                               pool_datasets=ready.label_config.pool, val_datasets=[],
                               test_datasets=None if ground_truth else [], val_targets_as_tasks=1)
        with pytest.raises(ConfigError, match="val_targets_as_tasks: needs validation targets"):
            dm.setup("fit")
