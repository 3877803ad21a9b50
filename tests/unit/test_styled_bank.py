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
