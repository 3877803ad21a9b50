"""Input handling shared by every baseline: conversion, validation, label remapping, no mutation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from spider.baselines import get_baseline, list_baselines
from spider.baselines._inputs import (
    as_float64,
    as_probabilities,
    classification_labels,
    is_regression_labels,
    regression_targets,
    resolve_dtype,
    softmax_probs,
)
from spider.errors import BaselineInputError, SpiderError

# ---------------------------------------------------------------------------------------------
# _inputs helpers


def test_as_float64_converts_and_never_shares_memory():
    for source in (
        np.arange(12, dtype=np.float64).reshape(4, 3),
        np.arange(12, dtype=np.float32).reshape(4, 3),
        torch.arange(12, dtype=torch.float64).reshape(4, 3),
        np.arange(12).reshape(4, 3),  # integers are fine too
        [[0.0, 1.0], [2.0, 3.0]],
    ):
        as_numpy = (lambda a: a.numpy()) if isinstance(source, torch.Tensor) else np.asarray
        before = as_numpy(source).astype(np.float64)  # astype always copies
        out = as_float64(source, "features")
        assert out.dtype == torch.float64 and out.shape == before.shape
        out += 100.0  # a baseline may work in place on what it gets
        np.testing.assert_array_equal(as_numpy(source), before)


def test_as_float64_accepts_read_only_and_non_contiguous_arrays():
    x = np.random.default_rng(0).normal(size=(5, 8))
    x.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on read-only numpy arrays: we must not
        out = as_float64(x[:, ::2], "features")
    np.testing.assert_array_equal(out.numpy(), x[:, ::2])
    big_endian = np.arange(6, dtype=">f8").reshape(3, 2)
    np.testing.assert_array_equal(as_float64(big_endian, "features").numpy(), big_endian)


def test_as_float64_copies_writable_memory_maps(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=(4, 3))
    mm[:] = 1.0
    out = as_float64(mm, "features")
    out += 1.0
    assert float(mm.sum()) == 12.0


def test_as_float64_dtype_option():
    x = np.ones((3, 2), dtype=np.float64)
    assert as_float64(x, "features", dtype=torch.float32).dtype == torch.float32
    assert as_float64(x, "features", dtype="float32").dtype == torch.float32
    assert resolve_dtype(None) == torch.float64
    with pytest.raises(BaselineInputError, match="dtype"):
        as_float64(x, "features", dtype=torch.int32)


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (np.zeros(5), r"features: expected a 2-D array \[N, D\], got shape \(5,\)"),
        (np.zeros((2, 3, 4)), "features: expected a 2-D array"),
        (np.zeros((0, 3)), "features: expected a non-empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), r"features: contains NaN or Inf in 1 of 2 rows"),
        (np.array([[1.0, np.inf]]), "features: contains NaN or Inf"),
        (np.array([["a", "b"]]), "features: expected a numeric array"),
        (np.ones((2, 2), dtype=bool), "features: expected real numbers"),
    ],
)
def test_as_float64_rejects_with_one_line_message(bad, pattern):
    with pytest.raises(BaselineInputError, match=pattern) as info:
        as_float64(bad, "features")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, SpiderError)


def test_as_float64_checks_row_count():
    with pytest.raises(BaselineInputError, match="features: has 3 rows but labels has 4 entries"):
        as_float64(np.zeros((3, 2)), "features", rows=4)


def test_classification_labels_remap_sorted_values():
    y, c = classification_labels(np.array([10, -2, 10, 7, 7]), 5)
    assert c == 3
    assert y.dtype == torch.int64
    assert y.tolist() == [2, 0, 2, 1, 1]
    y, c = classification_labels(torch.tensor([[1], [0], [1]]), 3)  # a column is fine
    assert (y.tolist(), c) == ([1, 0, 1], 2)


def test_classification_labels_never_share_memory():
    labels = np.array([0, 1, 1, 0])
    y, _ = classification_labels(labels, 4, num_classes=2)
    y += 5
    assert labels.tolist() == [0, 1, 1, 0]
    labels_t = torch.tensor([0, 1, 1, 0])
    y, _ = classification_labels(labels_t, 4, num_classes=2)
    y += 5
    assert labels_t.tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(
    "labels, kwargs, pattern",
    [
        ([3, 3, 3], {}, "labels: need at least 2 distinct classes, got 1"),
        ([0, 1, 1], {"n": 4}, "labels: has 3 entries but features has 4 rows"),
        ([0.0, 1.0], {}, "labels: expected integer class ids, got dtype torch.float64"),
        ([[0, 1], [1, 0]], {}, r"labels: expected class ids of shape \[N\]"),
        ([0, 2, 2, 0], {"num_classes": 3}, r"labels: class\(es\) 1 of num_classes=3 have no samples"),
        ([0, 5], {"num_classes": 3}, r"labels: ids must lie in \[0, 3\)"),
        ([0, 1], {"num_classes": 1}, "num_classes: need at least 2 classes"),
    ],
)
def test_classification_labels_rejections(labels, kwargs, pattern):
    n = kwargs.pop("n", None)
    with pytest.raises(BaselineInputError, match=pattern):
        classification_labels(np.asarray(labels), n, **kwargs)


def test_regression_targets_and_kind_detection():
    r = regression_targets(np.array([0.5, 1.5, 2.0]), 3)
    assert r.shape == (3, 1) and r.dtype == torch.float64
    assert is_regression_labels(np.zeros((3, 2), dtype=np.float32))
    assert is_regression_labels(torch.zeros(3))
    assert not is_regression_labels(np.array([0, 1]))
    with pytest.raises(BaselineInputError, match="labels: contains NaN"):
        regression_targets(np.array([0.5, np.nan]), 2)
    with pytest.raises(BaselineInputError, match="labels: has 2 rows but labels has 3"):
        regression_targets(np.zeros((2, 2)), 3)


def test_softmax_probs_is_stable_and_float64():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0], [0.0, -120.0, 5.0]], dtype=np.float32)
    p = softmax_probs(logits)
    assert p.dtype == torch.float64
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(3, dtype=torch.float64))
    assert float(p[2, 1]) > 0.0  # exp(-125) underflows in float32, not in float64
    expected = np.exp(logits[2].astype(np.float64) - 5.0)
    np.testing.assert_allclose(p[2].numpy(), expected / expected.sum(), rtol=1e-14)


def test_as_probabilities_validates_rows():
    p = np.array([[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_array_equal(as_probabilities(p).numpy(), p)
    with pytest.raises(BaselineInputError, match="source_probs: probabilities must be non-negative"):
        as_probabilities(np.array([[1.5, -0.5]]))
    with pytest.raises(BaselineInputError, match="source_probs: rows must sum to 1"):
        as_probabilities(np.array([[0.5, 0.2]]))


# ---------------------------------------------------------------------------------------------
# The same contract for every registered baseline


def _task(seed: int = 0, n: int = 90, d: int = 6, c: int = 3, cs: int = 12):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), n // c)
    centres = rng.normal(size=(c, d))
    features = np.maximum(centres[labels] + rng.normal(size=(n, d)), 0.0).astype(np.float32)
    logits = (rng.normal(size=(n, cs)) + 2.0 * np.eye(c, cs)[labels]).astype(np.float32)
    return features, labels, logits


def _call(name: str, features, labels, logits, **extra):
    baseline = get_baseline(name)
    kwargs = {"labels": labels, **extra}
    if "features" in baseline.needs:
        kwargs["features"] = features
    if "source_logits" in baseline.needs:
        kwargs["source_logits"] = logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return baseline(**kwargs)


ALL_BASELINES = list_baselines()


@pytest.mark.parametrize("name", ALL_BASELINES)
def test_baseline_returns_float_and_leaves_inputs_alone(name):
    features, labels, logits = _task()
    features64 = features.astype(np.float64)  # a dtype the baseline could have used as is
    copies = (features64.copy(), labels.copy(), logits.copy())
    value = _call(name, features64, labels, logits)
    assert isinstance(value, float) and np.isfinite(value)
    np.testing.assert_array_equal(features64, copies[0])
    np.testing.assert_array_equal(labels, copies[1])
    np.testing.assert_array_equal(logits, copies[2])


@pytest.mark.parametrize("name", ALL_BASELINES)
def test_baseline_accepts_torch_and_remaps_labels(name):
    features, labels, logits = _task()
    reference = _call(name, features, labels, logits)
    features_t = torch.from_numpy(features.astype(np.float64))
    keep = features_t.clone()
    via_torch = _call(name, features_t, torch.from_numpy(labels), torch.from_numpy(logits))
    assert torch.equal(features_t, keep)
    sparse_labels = np.array([-4, 17, 1000])[labels]  # same partition, non-contiguous ids
    remapped = _call(name, features, sparse_labels, logits)
    assert via_torch == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert remapped == pytest.approx(reference, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ALL_BASELINES)
def test_baseline_rejects_bad_inputs_with_named_argument(name):
    features, labels, logits = _task()
    one_class = np.zeros_like(labels)
    with pytest.raises(BaselineInputError, match=r"labels: need at least 2 distinct classes"):
        _call(name, features, one_class, logits)
    with pytest.raises(BaselineInputError, match=r"(labels|features|source_logits): has \d+"):
        _call(name, features[:-1], labels, logits[:-1])
    baseline = get_baseline(name)
    if "features" in baseline.needs:
        bad = features.copy()
        bad[3, 2] = np.nan
        with pytest.raises(BaselineInputError, match="features: contains NaN or Inf"):
            _call(name, bad, labels, logits)
    if "source_logits" in baseline.needs:
        bad = logits.copy()
        bad[0, 0] = np.inf
        with pytest.raises(BaselineInputError, match="source_logits: contains NaN or Inf"):
            _call(name, features, labels, bad)


@pytest.mark.parametrize("name", ["logme", "logme_official"])
def test_logme_regression_inputs(name):
    features, _, _ = _task()
    targets = np.random.default_rng(1).normal(size=(features.shape[0], 2))
    copy = targets.copy()
    value = get_baseline(name)(features=features, labels=targets)
    np.testing.assert_array_equal(targets, copy)
    one_column = get_baseline(name)(features=features, labels=targets[:, 0])
    assert np.isfinite(value) and np.isfinite(one_column)
    targets[:, 1] = 0.0
    with pytest.raises(BaselineInputError, match="labels: regression target column 1 is all zeros"):
        get_baseline(name)(features=features, labels=targets)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["logme", "logme_official", "hscore", "hscore_reg", "transrate"])
def test_cuda_inputs_match_cpu(name):
    features, labels, logits = _task()
    cpu = _call(name, features, labels, logits)
    gpu = _call(name, torch.from_numpy(features).cuda(), torch.from_numpy(labels).cuda(), logits)
    assert gpu == pytest.approx(cpu, rel=1e-9)
    fast = _call(name, torch.from_numpy(features).cuda(), labels, logits, dtype=torch.float32)
    assert fast == pytest.approx(cpu, rel=1e-2)
