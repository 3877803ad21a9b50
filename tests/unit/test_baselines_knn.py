"""``knn``: leave-one-out weighted kNN accuracy, against a plain loop written from its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spider.baselines import get_baseline
from spider.baselines import knn as knn_module
from spider.errors import BaselineInputError


def loop_reference(x, y, k=20, temperature=0.07):
    """Each image classified by the weighted vote of its k most cosine-similar other images."""
    x = x - x.mean(axis=0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    correct = 0
    for i in range(len(y)):
        sims = [(float(x[i] @ x[j]), j) for j in range(len(y)) if j != i]
        sims.sort(reverse=True)
        votes = {}
        for s, j in sims[:min(k, len(y) - 1)]:
            votes[y[j]] = votes.get(y[j], 0.0) + math.exp(s / temperature)
        correct += max(votes, key=votes.get) == y[i]
    return correct / len(y)


def blobs(seed, n_per_class=15, num_classes=4, dim=8, spread=1.0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = 2.0 * rng.normal(size=(num_classes, dim))[y] + spread * rng.normal(size=(len(y), dim))
    return x, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 5, 20, 500])
def test_knn_matches_the_definition(seed, k):
    x, y = blobs(seed, spread=2.5)  # overlapping classes: accuracies strictly between 0 and 1
    assert get_baseline("knn")(features=x, labels=y, k=k) == pytest.approx(loop_reference(x, y, k=k), abs=1e-12)


def test_knn_ranks_separable_features_above_noise():
    x, y = blobs(0, spread=0.1)
    noise = np.random.default_rng(1).normal(size=x.shape)
    score = get_baseline("knn")
    assert score(features=x, labels=y) == 1.0
    assert score(features=noise, labels=y) < 0.6
    # Blocks of rows give the same answer as one block.
    assert knn_module._BLOCK_ROWS > len(y)
    old = knn_module._BLOCK_ROWS
    try:
        knn_module._BLOCK_ROWS = 7
        assert score(features=noise, labels=y) == pytest.approx(loop_reference(noise, y), abs=1e-12)
    finally:
        knn_module._BLOCK_ROWS = old


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("k", 0, "a positive int"), ("k", 2.5, "a positive int"), ("k", True, "a positive int"),
    ("temperature", 0.0, "a finite float > 0"), ("temperature", -1.0, "a finite float > 0"),
    ("temperature", math.inf, "a finite float > 0"), ("temperature", math.nan, "a finite float > 0")])
def test_knn_rejects_bad_options(option, value, expected):
    x, y = blobs(0)
    with pytest.raises(BaselineInputError, match=f"^{option}: expected {expected}, got"):
        get_baseline("knn")(features=x, labels=y, **{option: value})


def test_knn_accepts_numpy_numbers_and_never_underflows_its_votes():
    x, y = blobs(2, spread=2.5)
    score = get_baseline("knn")
    assert score(features=x, labels=y, k=np.int64(5), temperature=np.float32(0.07)) == score(features=x, labels=y, k=5)
    # A temperature so small that exp(cosine / T) underflows: the nearest neighbour alone decides,
    # whatever the class ids (no vote of all zeros falling back to class 0).
    one_nn = loop_reference(x, y, k=1)
    relabelled = (y + 1) % 4
    for dtype in ("float64", "float32"):
        assert score(features=x, labels=y, k=5, temperature=1e-6, dtype=dtype) == pytest.approx(one_nn)
        assert score(features=x, labels=relabelled, k=5, temperature=1e-6, dtype=dtype) == pytest.approx(one_nn)
