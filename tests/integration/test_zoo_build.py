"""``python -m spider.zoo build``: stages, resume, idempotence, missing data, the tiny preset."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from spider.datamodules.ground_truth_csv import read_ground_truth
from spider.datamodules.tasks import TaskConfig
from spider.store import FeatureStore, validate
from spider.zoo.__main__ import main
from spider.datamodules.label_cache import open_label_cache
from spider.datamodules.finetune_bank import open_bank
from spider.pipeline.bank import BankSettings
from spider.pipeline.build import build_zoo, required_files
from spider.pipeline.build_manifest import read_manifest
from spider.pipeline.finetune import FinetuneConfig, RunCache
from spider.pipeline.recipe import LabelSettings, PoolSpec, TargetSpec, ZooRecipe
from spider.pipeline.recipes import REAL_PTMS, get_recipe, list_recipes
from spider.pipeline.pretrain import PretrainSpec
from helpers.zoo_run_support import fake_data_dir

LOW, HIGH = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


# ------------------------------------------------------------------------ synthetic data


def synthetic_recipe() -> ZooRecipe:
    grey = dict(in_chans=1, input_size=32, mean=(0.5,), std=(0.5,), epochs=1, batch_size=16)
    return ZooRecipe(
        name="synthetic",
        real_ptms=(),
        pretrained=(PretrainSpec("test_vit.mnist", "test_vit", ("mnist",), **grey),
                    PretrainSpec("test_resnet.mnist", "test_resnet", ("mnist",), **grey)),
        general=PretrainSpec("general", "test_convnext", ("mnist",), **grey),
        pool=(PoolSpec("mnist", "mnist", classes=LOW, per_class=8),),
        targets=(TargetSpec("usps", "usps", 4, 2, 4, test_split="test", classes=HIGH,
                            in_domain=("test_vit.mnist",)),),
        finetune=FinetuneConfig(epochs=1, batch_size=8),
        labels=LabelSettings(num_label_tasks=2, shard_size=2, task=TaskConfig(
            min_datasets_per_task=1, max_datasets_per_task=1, min_classes_per_task=2, max_classes_per_task=4,
            min_samples_per_class=2, max_samples_per_class=4)),
        extract_batch_size=32,
        max_workers=1,
        # (fake data: a mechanism test, not a disjoint-class benchmark)
        val_targets=(TargetSpec("usps_val", "usps", 4, 2, 4, test_split="test", classes=(5, 6)),),
        bank=BankSettings(num_tasks=2, finetune=FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=1, batch_size=8)),
    )


def _snapshot(root) -> dict[str, int]:
    """Every file, folder and link under ``root`` with its modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def synthetic_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    data = fake_data_dir(root / "data")
    report = build_zoo(synthetic_recipe(), root / "out", data_dir=data, progress=False)
    return report, root / "out", data


# ------------------------------------------------------------------------------- tests


def test_build_makes_store_ground_truth_and_labels(synthetic_build):
    report, out, _ = synthetic_build
    assert [s.name for s in report.stages] == ["pretrain", "extract", "groundtruth", "labels", "bank"]
    assert [s.computed for s in report.stages] == [3, 9, 16, 2, 4]
    store = FeatureStore(out / "store")
    assert store.models() == ["general", "test_resnet.mnist", "test_vit.mnist"]
    assert validate(store) == []
    ids = [store.entry(m, "usps").sample_ids() for m in store.models()]
    assert all(np.array_equal(ids[0], other) for other in ids[1:])  # same rows for every model
    assert store.entry("general", "mnist").class_names == ["0", "1", "2", "3", "4"]
    assert store.entry("general", "usps").class_names == ["5", "6", "7", "8", "9"]
    truth = read_ground_truth(out / "ground_truth.csv")
    assert truth.datasets == ["usps_val", "usps"] and truth.models == ["test_vit.mnist", "test_resnet.mnist"]
    assert np.all((truth.accuracy >= 0) & (truth.accuracy <= 100))
    details = (out / "ground_truth_details.csv").read_text().splitlines()
    assert details[3].startswith("usps,test_vit.mnist,") and details[3].endswith(",1")
    assert (out / "labels" / "labels.json").is_file()
    manifest = json.loads((out / "zoo.json").read_text())
    assert manifest["data"]["store"] == "store"  # relative to the zoo folder: a zoo can be moved
    assert read_manifest(out)["data"]["store"] == str(out.resolve() / "store")
    assert manifest["data"]["test_datasets"] == ["usps"] and manifest["data"]["val_datasets"] == ["usps_val"]
    assert manifest["data"]["pool_datasets"] == ["mnist"]
    assert all(m["params"] > 1000 for m in manifest["models"])
    bank = open_bank(out, ["test_vit.mnist", "test_resnet.mnist"])
    assert bank.num_tasks == 2 and bank.accuracy.shape == (2, 2) and np.isfinite(bank.accuracy).all()
    assert bank.test_nll.shape == (2, 2) and (bank.test_nll > 0).all()  # the same runs' test cross-entropy
    assert [s.to_json() for s in bank.specs] == open_label_cache(out / "labels").spec_texts[:2]
    assert {m["id"] for m in manifest["models"]} == {"test_vit.mnist", "test_resnet.mnist"}


def test_checkpoints_load_back_through_timm(synthetic_build):
    import timm
    import torch

    _, out, _ = synthetic_build
    config = json.loads((out / "checkpoints" / "test_vit.mnist" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]
    model = timm.create_model("test_vit", num_classes=config["num_classes"], in_chans=1,
                              checkpoint_path=str(out / "checkpoints" / "test_vit.mnist" / "model.pth"))
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_rebuild_does_nothing(synthetic_build):
    _, out, data = synthetic_build
    before = _snapshot(out)
    report = build_zoo(synthetic_recipe(), out, data_dir=data, progress=False)
    assert report.computed == 0
    assert _snapshot(out) == before


def test_finished_parts_need_no_data(synthetic_build, tmp_path):
    _, out, _ = synthetic_build
    report = build_zoo(synthetic_recipe(), out, data_dir=tmp_path / "nothing", progress=False)
    assert report.computed == 0


def test_killed_build_resumes_only_missing_parts(synthetic_build, tmp_path):
    import shutil

    _, out, data = synthetic_build
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    truth_before = (copy / "ground_truth.csv").read_text()
    # What a kill leaves: a run never written, a store entry never renamed into place.
    RunCache(copy / "ground_truth" / "runs").path("usps", "test_vit.mnist", 1e-3, 1).unlink()
    shutil.rmtree(copy / "store" / "test_resnet.mnist" / "usps")
    (copy / "ground_truth.csv").unlink()
    report = build_zoo(synthetic_recipe(), copy, data_dir=data, progress=False)
    assert {s.name: s.computed for s in report.stages} == {"pretrain": 0, "extract": 1, "groundtruth": 1,
                                                           "labels": 0, "bank": 0}
    assert (copy / "ground_truth.csv").read_text() == truth_before


def test_general_encoder_alternative_gets_its_own_store(tmp_path):
    recipe = synthetic_recipe()
    random = dataclasses.replace(recipe.general, id="general.random", epochs=0)
    recipe = dataclasses.replace(recipe, general_alternatives=(("random", random),))
    data = fake_data_dir(tmp_path / "data")
    build_zoo(recipe, tmp_path / "out", data_dir=data, progress=False, stages=("pretrain", "extract"))
    alt = FeatureStore(tmp_path / "out" / "alternatives" / "random" / "store")
    main_store = FeatureStore(tmp_path / "out" / "store")
    assert alt.models() == main_store.models()
    assert (tmp_path / "out" / "alternatives" / "random" / "store" / "test_vit.mnist").is_symlink()
    np.testing.assert_array_equal(alt.entry("test_vit.mnist", "usps").features(),
                                  main_store.entry("test_vit.mnist", "usps").features())
    assert not np.allclose(alt.entry("general", "usps").features(), main_store.entry("general", "usps").features())


def test_missing_data_is_one_line_naming_the_files(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["build", "tiny", "--out", str(out), "--data-dir", str(tmp_path / "empty"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: missing ")
    for name in required_files(get_recipe("tiny")):
        assert name in err
    assert "MANIFEST.md" in err and "SPIDER_DATA_DIR" in err
    assert not out.exists()  # nothing half-built


def test_unknown_recipe_exits_2(tmp_path, capsys):
    assert main(["build", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_recipes_meet_the_issue():
    assert list_recipes() == ["minizoo", "tiny", "zoo40"]
    recipe = get_recipe("minizoo")
    assert set(REAL_PTMS) <= set(recipe.ptm_ids()) and len(recipe.ptm_ids()) >= 18
    families = {s.arch for s in recipe.pretrained}
    assert len(recipe.pretrained) >= 6 and len(families) >= 3
    assert recipe.general.arch not in families | set(REAL_PTMS)
    assert len(recipe.targets) >= 5
    assert len(recipe.finetune.lrs) >= 2 and len(recipe.finetune.seeds) >= 2
    pool_sources = {p.source for p in recipe.pool}
    target_sources = {t.source for t in recipe.targets}
    for pool in recipe.pool:  # classes shared by source are split between pool and targets
        for target in recipe.targets:
            if target.source == pool.source:
                assert not set(pool.classes or ()) & set(target.classes or ())
    assert "omniglot_background" in pool_sources and "omniglot_evaluation" in target_sources
    assert len(recipe.val_targets) >= 3 and recipe.bank.num_tasks >= 16
    for val in recipe.val_targets:  # validation classes are neither pool nor test classes
        for other in (*recipe.pool, *recipe.targets):
            if other.source == val.source:
                assert val.classes and other.classes and not set(val.classes) & set(other.classes)
    usps = next(t for t in recipe.targets if t.id == "usps")
    assert set(usps.classes).isdisjoint(next(p for p in recipe.pool if p.id == "mnist").classes)
    assert "usps_cnn" in usps.in_domain


def test_omniglot_tasks_use_disjoint_characters():
    tasks = [t for t in get_recipe("minizoo").all_targets if t.source == "omniglot_evaluation"]
    assert len(tasks) >= 4 and all(len(t.classes) == 20 for t in tasks)
    chars = [c for t in tasks for c in t.classes]
    assert len(chars) == len(set(chars))


@pytest.mark.shared_data
def test_tiny_preset_builds_from_the_real_files(data_dir, tmp_path):
    out = tmp_path / "tiny"
    assert main(["build", "tiny", "--out", str(out), "--no-progress"]) == 0
    recipe = get_recipe("tiny")
    truth = read_ground_truth(out / "ground_truth.csv")
    assert truth.datasets == [t.id for t in recipe.all_targets] and truth.models == recipe.ptm_ids()
    assert open_bank(out, recipe.ptm_ids()).num_tasks == recipe.bank.num_tasks
    assert np.isfinite(truth.accuracy).all()
    store = FeatureStore(out / "store")
    assert validate(store) == []
    assert sorted(store.models()) == sorted(recipe.ptm_ids() + ["general"])
    # The in-domain digit CNN transfers to USPS digits 5-9 far above chance (20%).
    assert truth.matrix(["usps"], ["usps_cnn"])[0, 0] > 60
    before = _snapshot(out)
    assert main(["build", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert _snapshot(out) == before
