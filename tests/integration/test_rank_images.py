"""``python -m spider.rank --images``: rank a zoo for a folder of images, from a fit checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.zoo_run_support import FAKE_RECIPE, fake_data_dir, fake_recipe, trained_on_zoo, write_image_folder

from spider.errors import ConfigError
from spider.rank import default_checkpoint, main, rank_images, rank_task
from spider.pipeline.recipes import get_recipe


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """(zoo dir, re-ranker checkpoint, folder of the stored target's images) on generated digits."""
    data = fake_data_dir(tmp_path_factory.mktemp("fake-data"))
    with pytest.MonkeyPatch.context() as mp:
        zoo_dir, checkpoint, _ = trained_on_zoo(tmp_path_factory, mp, FAKE_RECIPE, data)
    view = fake_recipe().targets[0].load(data)["train"]
    images = write_image_folder(tmp_path_factory.mktemp("images") / "usps", view.images, view.labels,
                                list(view.class_names))
    return zoo_dir, checkpoint, images


def _assert_same_ranking(from_images, from_store):
    assert from_images.models == from_store.models and from_images.tokens == from_store.tokens
    assert from_images.scores == pytest.approx(from_store.scores, abs=1e-4)
    for name, score in from_store.general_scores.items():
        assert from_images.general_scores[name] == pytest.approx(score, abs=1e-4)


def test_images_of_a_stored_target_rank_as_the_store_does(fake_run):
    """The general encoder and PTMs are rebuilt from the zoo record and run on the images: the
    task tokens (hence scores) equal those of the features the build stored for the same images."""
    zoo_dir, checkpoint, images = fake_run
    for k in (0, 1):
        from_images = rank_images(images, checkpoint, rerank_topk=k)
        _assert_same_ranking(from_images, rank_task(checkpoint, zoo_dir / "store", "usps", rerank_topk=k))
    assert from_images.num_classes == 5 and from_images.num_samples == 30
    assert from_images.class_names == ["5", "6", "7", "8", "9"]
    # The top 1 is re-scored; fused with its general score it may end below the other PTM.
    assert sorted(from_images.tokens) == ["general", "specific"]
    assert {"load", "extract_general", "score", "extract_topk", "rescore", "total"} <= set(from_images.timings_ms)


def test_an_ensemble_with_rerankers_ranks_images_as_the_store_does(fake_run):
    zoo_dir, checkpoint, images = fake_run
    options = dict(rerank_topk=1, rerankers=[checkpoint], rerank_weight=0.5)
    from_images = rank_images(images, [checkpoint, checkpoint], **options)
    _assert_same_ranking(from_images, rank_task([checkpoint, checkpoint], zoo_dir / "store", "usps", **options))
    assert sorted(from_images.tokens) == ["general", "specific"]


def test_forward_reranking_of_images_ranks_as_the_store_does(fake_run):
    """--rerank-baseline on images: the top k PTMs run on the images and the baseline scores their
    features, as it scores the features the build stored for the same images."""
    zoo_dir, checkpoint, images = fake_run
    options = dict(rerank_topk=2, rerank_baseline="logme", rerank_weight=1.0)
    from_images = rank_images(images, checkpoint, **options)
    from_store = rank_task(checkpoint, zoo_dir / "store", "usps", **options)
    assert from_images.models == from_store.models and from_images.tokens == from_store.tokens
    assert from_images.tokens.count("specific") == 2 and "forward_topk" in from_images.timings_ms
    # The images' familiarity to the training tasks is the stored features' (same images).
    assert from_images.familiarity is not None and from_images.familiarity["novel"] == from_store.familiarity["novel"]
    assert from_images.familiarity["similarity"] == pytest.approx(from_store.familiarity["similarity"], abs=1e-4)


def test_cli_table_and_json(fake_run, tmp_path, capsys):
    _, checkpoint, images = fake_run
    out = tmp_path / "ranking.json"
    assert main(["--images", str(images), "--checkpoint", str(checkpoint), "--rerank-topk", "2",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for word in ("rank", "model", "score", "tokens", "specific", "time:", "extract_general", "extract_topk",
                 "rescore"):
        assert word in printed
    data = json.loads(out.read_text())
    assert [row["rank"] for row in data["ranking"]] == [1, 2]
    assert {row["tokens"] for row in data["ranking"]} == {"specific"}
    assert data["images"] == str(images) and data["num_classes"] == 5
    assert set(data["timings_ms"]) >= {"extract_general", "score", "extract_topk", "rescore"}


def test_checkpoint_defaults_to_the_default_fit_run(tmp_path, monkeypatch, capsys):
    assert default_checkpoint() == Path("runs/minizoo-token/checkpoints/last.ckpt")
    monkeypatch.chdir(tmp_path)  # no runs/ here
    write_image_folder(tmp_path / "images", np.zeros((2, 8, 8), np.uint8), np.array([0, 1]))
    assert main(["--images", str(tmp_path / "images")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs/minizoo-token/checkpoints/last.ckpt" in err
    assert "python -m spider.fit" in err


def _missing(root: Path) -> Path:
    return root / "nowhere"


def _empty(root: Path) -> Path:
    (root / "empty" / "a").mkdir(parents=True)  # class folders without images
    (root / "empty" / "notes.txt").write_text("not an image")
    return root / "empty"


def _one_class(root: Path) -> Path:
    return write_image_folder(root / "one", np.zeros((3, 8, 8), np.uint8), np.zeros(3, np.int64), ["cat"])


def _unreadable(root: Path) -> Path:
    folder = write_image_folder(root / "bad", np.zeros((4, 8, 8), np.uint8), np.array([0, 0, 1, 1]))
    (folder / "class1" / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_missing, "does not exist"),
        (_empty, "no images found"),
        (_one_class, "one class only ('cat')"),
        (_unreadable, "unreadable image"),
    ],
    ids=["missing", "empty", "one-class", "unreadable"],
)
def test_bad_folders_are_one_line_errors(fake_run, tmp_path, capsys, make, fragment):
    _, checkpoint, _ = fake_run
    folder = make(tmp_path)
    assert main(["--images", str(folder), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err
    assert str(folder) in err or "broken.png" in err


def test_a_checkpoint_without_a_zoo_needs_zoo_dir(fake_run, tmp_path):
    zoo_dir, checkpoint, images = fake_run
    state = torch.load(checkpoint, weights_only=True)
    state["spider"]["zoo"] = None  # as written by a fit on a plain feature store
    plain = tmp_path / "plain.ckpt"
    torch.save(state, plain)
    with pytest.raises(ConfigError, match="--zoo-dir"):
        rank_images(images, plain)
    assert rank_images(images, plain, zoo_dir=zoo_dir).models  # the zoo given explicitly


@pytest.mark.shared_data
def test_real_tiny_zoo_reranks_with_the_real_ptms(data_dir, tmp_path_factory, tmp_path):
    """Tiny recipe from the real files: the real digit CNNs are loaded from the shared weights
    and re-score a folder of real USPS images exactly as their stored features do."""
    with pytest.MonkeyPatch.context() as mp:
        zoo_dir, checkpoint, _ = trained_on_zoo(tmp_path_factory, mp, "tiny", data_dir)
    view = next(t for t in get_recipe("tiny").targets if t.id == "usps").load(data_dir)["train"]
    images = write_image_folder(tmp_path / "usps", view.images, view.labels, list(view.class_names))
    from_images = rank_images(images, checkpoint, rerank_topk=3, data_dir=data_dir)
    assert sorted(from_images.models) == sorted(get_recipe("tiny").ptm_ids())
    assert from_images.tokens == ["specific"] * 3
    _assert_same_ranking(from_images, rank_task(checkpoint, zoo_dir / "store", "usps", rerank_topk=3))
