"""Hostile inputs of ``spider zoo add-model``: one-line errors, exit 2, no checkpoint written."""

import pytest
import torch

from helpers.add_model_support import NEW, OLD, trained_two_of_three, use_recipe
from spider.errors import SpiderError
from spider.zoo.__main__ import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return trained_two_of_three(tmp_path_factory)


@pytest.fixture
def recipe(zoo, monkeypatch):
    use_recipe(monkeypatch, zoo.data_dir)


def _fails(capsys, argv, *expected):
    assert main(["add-model", *map(str, argv), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for text in expected:
        assert text in err, err


def test_model_already_ranked(zoo, recipe, tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    _fails(capsys, [zoo.zoo_dir, zoo.checkpoint, OLD[0], "--out", out], "already ranks", OLD[0])
    assert not out.exists()


def test_unknown_model(zoo, recipe, tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    _fails(capsys, [zoo.zoo_dir, zoo.checkpoint, "no_such_ptm", "--out", out], "unknown", "no_such_ptm")
    assert not out.exists()


def test_checkpoint_of_another_zoo(zoo, recipe, tmp_path, capsys):
    state = torch.load(zoo.checkpoint, map_location="cpu", weights_only=True)
    state["spider"]["zoo"] = {**state["spider"]["zoo"], "recipe": "minizoo", "recipe_hash": "0123456789abcdef"}
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    out = tmp_path / "x.ckpt"
    _fails(capsys, [zoo.zoo_dir, other, NEW, "--out", out], "trained on zoo 'minizoo'", str(zoo.zoo_dir))
    assert not out.exists()


def test_checkpoint_without_zoo(zoo, recipe, tmp_path, capsys):
    state = torch.load(zoo.checkpoint, map_location="cpu", weights_only=True)
    state["spider"]["zoo"] = None
    plain = tmp_path / "plain.ckpt"
    torch.save(state, plain)
    _fails(capsys, [zoo.zoo_dir, plain, NEW, "--out", tmp_path / "x.ckpt"], "not trained on a zoo build")


def test_never_overwrites_the_input(zoo, recipe, capsys):
    before = zoo.checkpoint.read_bytes()
    _fails(capsys, [zoo.zoo_dir, zoo.checkpoint, NEW, "--out", zoo.checkpoint], "is the input checkpoint")
    assert zoo.checkpoint.read_bytes() == before


def test_existing_output(zoo, recipe, tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    out.write_text("keep me")
    _fails(capsys, [zoo.zoo_dir, zoo.checkpoint, NEW, "--out", out], "already exists")
    assert out.read_text() == "keep me"


def test_not_a_zoo(zoo, recipe, tmp_path, capsys):
    _fails(capsys, [tmp_path, zoo.checkpoint, NEW, "--out", tmp_path / "x.ckpt"], "zoo.json not found")


def test_missing_run_config(zoo, recipe, tmp_path, capsys):
    lonely = tmp_path / "a" / "b" / "last.ckpt"
    lonely.parent.mkdir(parents=True)
    lonely.write_bytes(zoo.checkpoint.read_bytes())
    _fails(capsys, [zoo.zoo_dir, lonely, NEW, "--out", tmp_path / "x.ckpt"], "config.yaml", "--config")


def test_failure_leaves_no_checkpoint(zoo, recipe, tmp_path, monkeypatch):
    import spider.incremental as incremental

    def broken(*args, **kwargs):
        raise SpiderError("training the new model's token: non-finite loss nan at epoch 0, step 0")

    monkeypatch.setattr(incremental, "train_new_model", broken)
    out = tmp_path / "out" / "x.ckpt"
    with pytest.raises(SpiderError, match="non-finite loss"):
        incremental.add_model(zoo.zoo_dir, zoo.checkpoint, NEW, out)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))
