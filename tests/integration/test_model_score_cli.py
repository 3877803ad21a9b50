"""``spider model-score`` (``python -m spider.model_score``): LGC of a timm model with a local
checkpoint on an ``.npz`` task, the same number as the Python API; and the zoo path on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spider.model_score import main, score_prepared

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    import timm

    root = tmp_path_factory.mktemp("model_score")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    torch.save(model.state_dict(), root / "model.pth")
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    x = rng.integers(0, 256, size=(12, 20, 20, 3), dtype=np.uint8)
    x[y == 1, :10] //= 4  # classes that differ a little
    np.savez(root / "task.npz", x=x, y=y)
    return root, x, y


def test_cli_json_matches_the_python_api(task, capsys):
    from spider.pipeline.extract import load_model

    root, x, y = task
    out = root / "out.json"
    argv = ["--model", "test_resnet", "--checkpoint", str(root / "model.pth"), "--arrays", str(root / "task.npz"),
            "--max-params", "5000", "--batch-size", "5", "--json", str(out)]
    assert main(argv) == 0
    assert "test_resnet" in capsys.readouterr().out  # the table
    result = json.loads(out.read_text())
    assert result["score"] == "lgc" and result["models"] == ["test_resnet"] and result["num_classes"] == 3
    assert result["options"] == {"max_params": 5000, "batch_size": 5}
    expected = score_prepared("lgc", load_model("test_resnet", checkpoint=root / "model.pth"), x, y, max_params=5000)
    assert result["scores"]["test_resnet"] == pytest.approx(expected, abs=1e-9)
    assert -1.0 <= expected <= 1.0


def test_spider_command_lists_the_model_scores(capsys):
    from spider.cli import main as spider_main

    assert spider_main(["model-score", "--list"]) == 0
    assert capsys.readouterr().out.startswith("lgc: ")


@pytest.mark.slow
@pytest.mark.shared_data
def test_zoo_ptms_on_a_zoo_target(tmp_path, data_dir, capsys):
    """Two real PTMs of a tiny zoo built from the shared data, on one of its targets."""
    from spider.pipeline.build import build_zoo
    from spider.pipeline.recipes import get_recipe

    zoo = tmp_path / "tiny"
    build_zoo("tiny", zoo, data_dir=data_dir, workers=1, progress=False, log=lambda *a: None)
    recipe = get_recipe("tiny")
    ptms = [r.id for r in recipe.ptm_refs(zoo / "checkpoints")][:2]
    target = recipe.all_targets[0].id
    argv = ["--zoo-dir", str(zoo), "--target", target, "--data-dir", str(data_dir), "--json", "-"]
    assert main([*argv, *(a for p in ptms for a in ("--ptm", p))]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["models"] == ptms and sorted(result["ranking"]) == sorted(ptms)
    assert all(-1.0 <= result["scores"][p] <= 1.0 for p in ptms)
