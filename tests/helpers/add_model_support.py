"""Test support for ``spider zoo add-model``: a fake-digits zoo of three timm PTMs with a
fine-tuning bank, and a re-ranker (mixed labels + fine-tuning prior) trained on two of them.

The third PTM's store entries and bank runs are deleted after the build, so adding it runs every
stage (extraction, bank runs, labelling) for real. Built once per pytest session under the
session's base temp dir; every caller gets its own copy of the zoo directory, because adding the
third PTM (even when it then fails) writes its features and bank runs into the zoo it is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

from helpers.zoo_run_support import fake_data_dir, fake_recipe, fit_overrides, recipes_with
from spider.config import compose
from spider.fit import fit
from spider.run_inputs import build_datamodule, build_inputs, resolve_inputs
from spider.pipeline import recipes
from spider.pipeline.bank import BankSettings
from spider.pipeline.finetune import FinetuneConfig
from spider.pipeline.pretrain import PretrainSpec
from spider.pipeline.recipe import ZooRecipe

RECIPE = "test_add_model"
OLD = ["test_vit.mnist", "test_resnet.mnist"]
NEW = "test_convnext.mnist"


def recipe() -> ZooRecipe:
    base = fake_recipe()
    grey = dict(in_chans=1, input_size=32, mean=(0.5,), std=(0.5,), epochs=1, batch_size=16)
    return dataclasses.replace(
        base, name=RECIPE, pretrained=base.pretrained + (PretrainSpec(NEW, "test_convnext", ("mnist",), **grey),),
        bank=BankSettings(num_tasks=2, finetune=FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=1, batch_size=8)))


@dataclasses.dataclass(frozen=True)
class TrainedZoo:
    zoo_dir: Path
    checkpoint: Path
    data_dir: Path


def use_recipe(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("SPIDER_DATA_DIR", str(data_dir))
    monkeypatch.setattr(recipes, "RECIPES", recipes_with(**{RECIPE: recipe}))


def trained_two_of_three(tmp_path_factory) -> TrainedZoo:
    """A private copy of the zoo (the third PTM's features and bank runs removed) and the ranker
    of the first two."""
    root = tmp_path_factory.getbasetemp() / "add-model-zoo"
    zoo_dir, run_dir = root / "zoo", root / "run"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    data_dir = fake_data_dir(tmp_path_factory.getbasetemp() / "fake-data-add-model")
    if not checkpoint.is_file():
        _build(zoo_dir, run_dir, data_dir)
    private = tmp_path_factory.mktemp("add-model-copy") / "zoo"
    shutil.copytree(zoo_dir, private)
    return TrainedZoo(private, checkpoint, data_dir)


def _build(zoo_dir: Path, run_dir: Path, data_dir: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        use_recipe(mp, data_dir)
        cfg = compose(fit_overrides(RECIPE, zoo_dir, run_dir, f"data.models=[{','.join(OLD)}]",
                                    "data.label_source=mixed", "model.prior=finetune_mean", "results_table=false",
                                    # The mini zoo's last step: the ranker also trains on its validation
                                    # target, which has no ground truth for the PTM added later.
                                    "data.val_datasets=[usps]", "data.test_datasets=[]",
                                    "data.val_targets_as_tasks=2"))
        # The prior reads the label cache before the trainer's prepare_data would build it.
        build_inputs(cfg)
        build_datamodule(cfg, resolve_inputs(cfg), progress=False).prepare_data()
        fit(cfg)
    shutil.rmtree(zoo_dir / "store" / NEW)
    for runs in (zoo_dir / "bank" / "runs").glob(f"*/{NEW}"):
        shutil.rmtree(runs)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
