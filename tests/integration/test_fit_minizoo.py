"""``python -m spider.fit`` on a zoo recipe: the default is the mini zoo, built first where missing."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from helpers.zoo_run_support import FAKE_RECIPE, fake_data_dir, fake_recipe, recipes_with, trained_on_zoo

from omegaconf import OmegaConf

from spider.config import compose
from spider.errors import ConfigError
from spider.fit import main
from spider.run_inputs import prepare_store
from spider.datamodules.finetune_bank import open_bank
from spider.pipeline import recipes
from spider.pipeline.build import required_files
from spider.pipeline.recipe import LabelSettings
from spider.pipeline.recipes import get_recipe
from spider.train import build_scorer, train

# DataConfig keys of the label settings a zoo build uses for its label cache.
LABEL_KEYS = [f.name for f in dataclasses.fields(LabelSettings)]


def test_default_config_trains_on_the_minizoo():
    cfg = compose()
    assert cfg.data.name == "minizoo" and cfg.data.zoo == "minizoo"
    assert cfg.data.store is None and cfg.data.ground_truth is None  # the zoo provides them
    assert cfg.data.synthetic is None
    assert cfg.run_dir == "runs/minizoo-token"


@pytest.mark.parametrize(("config", "recipe"), [("minizoo", "minizoo"), ("minizoo_tiny", "tiny"), ("zoo40", "zoo40")])
def test_zoo_data_configs_match_their_recipes_label_settings(config, recipe):
    """Same task settings as the recipe, so a fit reuses the label cache the build made."""
    cfg = compose([f"data={config}"])
    settings = dataclasses.asdict(get_recipe(recipe).labels)
    data = OmegaConf.to_container(cfg.data)
    assert cfg.data.zoo == recipe
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()} == {k: data[k] for k in LABEL_KEYS}


def test_missing_data_is_one_line_naming_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPIDER_DATA_DIR", str(tmp_path / "nothing"))
    zoo_dir, run_dir = tmp_path / "zoo", tmp_path / "run"
    assert main([f"data.zoo_dir={zoo_dir}", f"run_dir={run_dir}", "logger=none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: missing ")
    for name in required_files(get_recipe("minizoo")):
        assert name in err
    assert "SPIDER_DATA_DIR" in err and "data=synthetic" in err
    assert not zoo_dir.exists() and not run_dir.exists()  # nothing half-built


def test_unknown_recipe_and_conflicting_store_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.zoo': unknown zoo recipe 'nope'"):
        prepare_store(compose(["data.zoo=nope", f"run_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="data.store"):
        prepare_store(compose([f"data.store={tmp_path}", f"run_dir={tmp_path}"]))


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    data = fake_data_dir(tmp_path_factory.mktemp("fake-data"))
    with pytest.MonkeyPatch.context() as mp:
        zoo_dir, checkpoint, result = trained_on_zoo(tmp_path_factory, mp, FAKE_RECIPE, data)
    return zoo_dir, checkpoint, result, data


def test_fit_builds_the_zoo_then_trains_and_ends_with_the_table(fake_run):
    zoo_dir, checkpoint, result, _ = fake_run
    assert (zoo_dir / "zoo.json").is_file() and checkpoint.is_file()
    assert result["tables"]["val"] == {}  # the recipe declares no validation targets
    table = result["tables"]["test"]["wtau_paper"]
    # The scorer, its re-ranking, the baselines and their aggregate, every available static prior
    # (finetune_mean appears only when the fit reads a fine-tuning bank; this one reads none).
    assert set(table) == {"scorer", "rerank@2", "logme", "leep", "nce", "hscore", "copeland", "label_mean",
                          "param_count"}
    assert set(table["scorer"]) == {"usps", "mean"} and math.isfinite(table["scorer"]["usps"])
    # Same task settings as the build: the fit's label cache started as a copy of the build's
    # (no task labelled twice) and the build's own output was left alone.
    (cache,) = (zoo_dir / "cache").glob("labels-*")
    built = sorted(p.name for p in (zoo_dir / "labels").iterdir())
    assert built == ["labels.json", "shard-00000.npz"]
    copied, original = cache / "shard-00000.npz", zoo_dir / "labels" / "shard-00000.npz"
    assert copied.read_bytes() == original.read_bytes()
    assert copied.stat().st_mtime_ns == original.stat().st_mtime_ns  # copied, never rewritten
    assert (cache / "targets").is_dir()
    info = torch.load(checkpoint, weights_only=True)["spider"]
    assert info["zoo"]["recipe"] == FAKE_RECIPE and info["zoo"]["dir"] == str(zoo_dir.resolve())
    assert sorted(info["model_names"]) == ["test_resnet.mnist", "test_vit.mnist"]
    assert info["target_names"] == ["usps"]


def test_other_task_settings_get_their_own_label_cache(fake_run, tmp_path, monkeypatch):
    zoo_dir, _, _, data = fake_run
    monkeypatch.setenv("SPIDER_DATA_DIR", str(data))
    monkeypatch.setattr(recipes, "RECIPES", recipes_with(**{FAKE_RECIPE: fake_recipe}))
    common = ["data=minizoo_tiny", f"data.zoo={FAKE_RECIPE}", f"data.zoo_dir={zoo_dir}", f"run_dir={tmp_path}"]
    same = prepare_store(compose(common))
    other = prepare_store(compose(common + ["data.task.max_samples_per_class=5"]))
    assert Path(same["label_cache"]).parent == Path(other["label_cache"]).parent == zoo_dir / "cache"
    assert same["label_cache"] != other["label_cache"]
    assert not Path(other["label_cache"]).exists()  # built on first use, not copied from the zoo
    assert same["store"] == other["store"] == str(zoo_dir.resolve() / "store")
    assert same["data"]["models"] == ["test_resnet.mnist", "test_vit.mnist"]


def test_a_zoo_dir_of_another_recipe_is_refused(fake_run, tmp_path, monkeypatch):
    zoo_dir, _, _, data = fake_run
    monkeypatch.setenv("SPIDER_DATA_DIR", str(data))
    other = dataclasses.replace(fake_recipe(), name="test_other")
    monkeypatch.setattr(recipes, "RECIPES", recipes_with(test_other=lambda: other))
    before = (zoo_dir / "zoo.json").read_text()
    with pytest.raises(ConfigError, match="holds zoo 'test_fake_digits', not 'test_other'"):
        prepare_store(compose(["data=minizoo_tiny", "data.zoo=test_other", f"data.zoo_dir={zoo_dir}",
                               f"run_dir={tmp_path}"]))
    assert (zoo_dir / "zoo.json").read_text() == before  # refused before building anything


@pytest.mark.shared_data
def test_fit_on_the_tiny_recipe_built_from_the_real_files(data_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        zoo_dir, checkpoint, result = trained_on_zoo(tmp_path_factory, mp, "tiny", data_dir)
    recipe = get_recipe("tiny")
    assert checkpoint.is_file()
    if result:  # this session trained it (else another test module did, with the same settings)
        table = result["tables"]["test"]["wtau_paper"]
        assert set(table["scorer"]) == {t.id for t in recipe.targets} | {"mean"}
        assert all(math.isfinite(v) for v in table["scorer"].values())
    info = torch.load(checkpoint, weights_only=True)["spider"]
    assert info["zoo"]["recipe"] == "tiny" and sorted(info["model_names"]) == sorted(recipe.ptm_ids())



@pytest.mark.shared_data
def test_fit_with_fine_tuning_labels_and_the_history_prior(data_dir, tmp_path_factory, tmp_path):
    """label_source=mixed reads the zoo's fine-tuning bank; model.prior puts its prior in the scorer."""
    with pytest.MonkeyPatch.context() as mp:
        zoo_dir, _, _ = trained_on_zoo(tmp_path_factory, mp, "tiny", data_dir)
    cfg = compose(["data=minizoo_tiny", f"data.zoo_dir={zoo_dir}", f"run_dir={tmp_path / 'run'}", "logger=none",
                   "trainer.max_epochs=1", "data.label_source=mixed", "data.mixed_weight=2",
                   "model.prior=finetune_mean"])
    result, objects = train(cfg)
    labels = objects["datamodule"].training_labels
    assert labels.source == "mixed" and len(labels.spec_texts) == 4 + 2  # 4 label tasks + the 2 bank tasks again
    model = objects["model"]
    bank = open_bank(zoo_dir, objects["datamodule"].model_names)
    assert torch.argsort(model.model_prior).tolist() == torch.argsort(torch.tensor(bank.prior())).tolist()
    assert math.isfinite(result["test"]["test/wtau_paper"]) and "val/wtau_paper" in result["val"]
    with pytest.raises(ConfigError, match="model.prior': unknown static prior 'nope'"):
        build_scorer(compose(["data=minizoo_tiny", "model.prior=nope"]), objects["datamodule"])
    # data.history_tokens: the model tokens start from the bank instead of at random.
    from spider.priors import history_embedding

    started = build_scorer(compose(["data=minizoo_tiny", "data.history_tokens=0.2"]), objects["datamodule"])
    expected = history_embedding(bank.accuracy, started.model_tokens.shape[1], 0.2)
    assert torch.allclose(started.model_tokens.detach(), torch.as_tensor(expected, dtype=torch.float32))
