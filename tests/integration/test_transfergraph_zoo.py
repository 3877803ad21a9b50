"""TransferGraph on the ``tiny`` zoo built from the real data: ``spider transfergraph fit`` on its
fine-tuning bank, ``rank --images`` of a target, and the benchmark's row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.zoo_run_support import write_image_folder

from spider.cli import main as spider_main
from spider.pipeline.recipes import get_recipe
from spider.transfergraph import load
from spider.transfergraph.zoo import zoo_history

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory, data_dir):
    from spider.pipeline.build import build_zoo

    zoo = tmp_path_factory.getbasetemp() / "tgraph-tiny-zoo"
    build_zoo("tiny", zoo, data_dir=data_dir, workers=1, progress=False, log=lambda *a: None)
    return zoo


@pytest.fixture(scope="module")
def fitted(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("tgraph") / "model.pt"
    assert spider_main(["transfergraph", "fit", "--zoo-dir", str(tiny_zoo), "--out", str(out), "--steps", "50"]) == 0
    return out


def test_fit_reads_the_pool_history_and_metadata(tiny_zoo, fitted):
    recipe = get_recipe("tiny")
    history = zoo_history(tiny_zoo)
    assert history.bank.num_tasks == recipe.bank.num_tasks and len(history.tokens) == recipe.bank.num_tasks
    assert history.metadata["mnist_cnn"].family == "digit_cnn" and history.metadata["mnist_cnn"].source == "mnist"
    assert history.metadata["test_vit.mnist"].family == "test_vit"
    model = load(fitted)
    assert sorted(model.models) == sorted(recipe.ptm_ids()) and model.hparams.steps == 50
    assert model.info["zoo_dir"] == str(tiny_zoo.resolve()) and model.info["general"] == "general"


def test_rank_images_of_a_target_as_from_its_stored_features(tiny_zoo, fitted, data_dir, tmp_path, capsys):
    from spider.rank import task_tokens
    from spider.store import FeatureStore

    view = next(t for t in get_recipe("tiny").targets if t.id == "usps").load(data_dir)["train"]
    images = write_image_folder(tmp_path / "usps", view.images, view.labels, list(view.class_names))
    out = tmp_path / "ranking.json"
    argv = ["transfergraph", "rank", "--model", str(fitted), "--images", str(images), "--json", str(out)]
    assert spider_main(argv) == 0
    printed = capsys.readouterr().out
    assert "extract_general" in printed and "time:" in printed
    ranking = json.loads(out.read_text())
    model = load(fitted)
    assert sorted(r["model"] for r in ranking["ranking"]) == sorted(model.models)
    assert ranking["num_classes"] == len(view.class_names)
    stored = model.predict([task_tokens(FeatureStore(tiny_zoo / "store"), "general", "usps")[0]])[0]
    from_images = np.array([ranking["general_scores"][m] for m in model.models])
    np.testing.assert_allclose(from_images, stored, atol=1e-3)
    scores = [r["score"] for r in ranking["ranking"]]
    assert scores == sorted(scores, reverse=True)


def test_benchmark_row_is_chosen_on_validation(tiny_zoo):
    from spider.benchmark.inputs import open_zoo
    from spider.benchmark.transfergraph import transfergraph_row

    zoo = open_zoo(tiny_zoo)
    extraction = {zoo.general: {t: 0.5 for t in zoo.targets}}
    grid = {"dim": (8,), "layers": (1,), "topk": (1, 2), "predictor": ("linear",), "steps": (30,)}
    row, info = transfergraph_row(zoo, extraction, grid)
    assert row.name == "transfergraph" and row.kind == "history" and row.general_passes == 1
    assert row.preds[0].shape == zoo.truth.shape and np.isfinite(row.preds[0]).all()
    assert all(row.seconds[t] > 0.5 for t in zoo.targets)
    best = max(info["settings"], key=lambda s: s["val"]["wtau_paper"])
    assert info["chosen"] == best["hparams"] and len(info["settings"]) == 2
    assert "chosen on validation" in row.note and info["train_seconds"] > 0


def test_benchmark_row_averages_its_seeds_like_model_spiders_rows(tiny_zoo):
    """With several seeds each setting is fitted once per seed and judged on the mean over them."""
    from spider.benchmark.inputs import open_zoo
    from spider.benchmark.transfergraph import transfergraph_row

    zoo = open_zoo(tiny_zoo)
    extraction = {zoo.general: {t: 0.5 for t in zoo.targets}}
    grid = {"dim": (8,), "layers": (1,), "topk": (1,), "predictor": ("linear",), "steps": (30,)}
    row, info = transfergraph_row(zoo, extraction, grid, seeds=(0, 1))
    single = [transfergraph_row(zoo, extraction, grid, seeds=(s,))[0] for s in (0, 1)]
    assert len(row.preds) == 2 and not np.allclose(row.preds[0], row.preds[1])
    assert np.allclose(row.preds[0], single[0].preds[0]) and np.allclose(row.preds[1], single[1].preds[0])
    for t in zoo.targets:
        assert row.per_target["wtau_paper"][t] == pytest.approx(
            np.mean([r.per_target["wtau_paper"][t] for r in single]))
    assert info["chosen"]["seed"] == [0, 1] and "mean over 2 seed(s)" in row.note
