"""``experiments/zoo40/styled_bank.py``: the image styles of the bank's twins and the twins themselves."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from spider import paths

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import styled_bank  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 9, 7), (2, 9, 7, 3)])
@pytest.mark.parametrize("style", sorted(styled_bank.STYLES))
def test_every_style_keeps_shape_and_dtype(style, shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = styled_bank.STYLES[style](images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)


def test_negative_edges_and_pixelate_by_hand():
    img = np.zeros((1, 4, 8), dtype=np.uint8)
    img[:, :, 4:] = 200  # a vertical step edge between columns 3 and 4
    assert (styled_bank.negative(img) == 255 - img).all()
    e = styled_bank.edges(img)
    assert e.max() == 255 and (e[:, :, [3, 4]] == 255).all() and (e[:, :, [0, 1, 6, 7]] == 0).all()
    rgb = np.repeat(img[..., None], 3, axis=-1)
    assert (styled_bank.edges(rgb) == e[..., None]).all()  # colour images: three equal channels
    ramp = np.arange(8, dtype=np.uint8)[None, None, :].repeat(4, axis=1) * 10
    p = styled_bank.pixelate(ramp)
    assert (p[0, :, :4] == 15).all() and (p[0, :, 4:] == 55).all()  # 4 x 4 cell means


def test_twins_point_at_the_styled_datasets_and_keep_rows():
    from spider.datamodules.tasks import TaskSpec

    spec = TaskSpec(classes=(("mnist", 3), ("mnist", 1)), rows=((0, 2), (1, 5)))
    twin = styled_bank.twin(spec, "edges")
    assert twin.classes == (("mnist.edges", 3), ("mnist.edges", 1)) and twin.rows == spec.rows
    assert json.loads(twin.to_json())["classes"][0][0] == "mnist.edges"


def test_training_appends_the_twins_reads_the_linked_store_and_restores(tmp_path, monkeypatch):
    import types

    import spider.datamodules.episodes as episodes
    import spider.run_inputs as run_inputs
    from spider.datamodules.label_sources import TrainingLabels

    labels = TrainingLabels(["a", "b"], np.zeros((2, 3)), "finetune")
    monkeypatch.setattr(episodes, "training_labels", lambda *a, **k: labels)
    monkeypatch.setattr(run_inputs, "_zoo_inputs", lambda cfg: {"store": "zoo/store", "label_cache": "zoo/labels"})
    real_labels, real_inputs = episodes.training_labels, run_inputs._zoo_inputs
    bank = object.__new__(styled_bank.StyledBank)
    bank.p, bank.store = types.SimpleNamespace(_store=None), tmp_path / "store"
    bank.twins = {"negative": (["a.neg", "b.neg"], np.ones((2, 3))), "edges": (["a.edg", "b.edg"], np.full((2, 3), 2.0))}
    with bank.training(("edges",)):
        out = episodes.training_labels("finetune", None)
        assert out.spec_texts == ["a", "b", "a.edg", "b.edg"] and out.scores[:, 0].tolist() == [0, 0, 2, 2]
        assert run_inputs._zoo_inputs(None) == {"store": str(tmp_path / "store"), "label_cache": "zoo/labels-styled"}
        assert bank.p._store is not None
        with pytest.raises(ValueError, match="fine-tuning labels only"):
            episodes.training_labels("copeland", None)
    assert episodes.training_labels is real_labels and run_inputs._zoo_inputs is real_inputs and bank.p._store is None
