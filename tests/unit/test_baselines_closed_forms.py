"""LogME, H-Score and TransRate against slow textbook formulas on small random problems."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from spider.baselines import hscore as hscore_module
from spider.baselines import transrate as transrate_module
from spider.baselines.hscore import HScoreTieWarning, hscore, trace_pinv_quadratic
from spider.baselines.logme import logme
from spider.baselines.transrate import transrate


def _features(rng, n, d, c, rank=None):
    labels = rng.integers(0, c, size=n)
    labels[:c] = np.arange(c)  # every class present
    x = rng.normal(size=(n, d)) + 0.8 * rng.normal(size=(c, d))[labels]
    if rank is not None:  # rank-deficient: columns are combinations of `rank` columns
        x = x[:, :rank] @ rng.normal(size=(rank, d))
    return np.maximum(x, 0.0), labels


def _evidence(x: np.ndarray, t: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """Log evidence of Bayesian ridge regression, straight from the definition (per sample)."""
    n, d = x.shape
    log_alpha, log_beta = min(max(log_alpha, -40.0), 40.0), min(max(log_beta, -40.0), 40.0)
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    a = alpha * np.eye(d) + beta * x.T @ x
    m = beta * np.linalg.solve(a, x.T @ t)
    logdet = np.linalg.slogdet(a)[1]
    value = (
        0.5 * d * log_alpha + 0.5 * n * log_beta - 0.5 * logdet
        - 0.5 * beta * np.sum((t - x @ m) ** 2) - 0.5 * alpha * m @ m - 0.5 * n * math.log(2 * math.pi)
    )  # fmt: skip
    return value / n


def _brute_force_logme(x: np.ndarray, t: np.ndarray) -> float:
    best = -math.inf
    for start in [(-4.0, 0.0), (0.0, 0.0), (4.0, 2.0), (8.0, 0.0)]:
        res = minimize(lambda p: -_evidence(x, t, p[0], p[1]), start, method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000})  # fmt: skip
        best = max(best, -res.fun)
    return best


@pytest.mark.parametrize("n, d, rank", [(80, 5, None), (12, 20, None), (60, 10, 4)])
def test_logme_is_the_maximum_of_the_evidence(n, d, rank):
    rng = np.random.default_rng(n + d)
    x, labels = _features(rng, n, d, 3, rank)
    per_class = [_brute_force_logme(x, (labels == c).astype(np.float64)) for c in range(3)]
    # Nelder-Mead finds the maximum from below; ours must be at least as high and agree closely.
    value = logme(features=x, labels=labels)
    assert value >= np.mean(per_class) - 1e-9
    assert value == pytest.approx(np.mean(per_class), abs=1e-7)


def test_logme_unpredictable_class_takes_the_alpha_to_infinity_limit():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    x = rng.normal(size=(60, 4))
    # Every class sums to zero: X^T t = 0, so the weights can only hurt the evidence.
    for c in range(3):
        x[labels == c] -= x[labels == c].mean(axis=0)
    counts = np.bincount(labels)
    limit = np.mean([-0.5 * (math.log(2 * math.pi * k / 60) + 1.0) for k in counts])
    assert logme(features=x, labels=labels) == pytest.approx(limit, rel=1e-12)


def test_logme_regression_matches_per_column_maximum():
    rng = np.random.default_rng(5)
    x, _ = _features(rng, 50, 6, 2)
    targets = x @ rng.normal(size=(6, 2)) + rng.normal(size=(50, 2))
    expected = np.mean([_brute_force_logme(x, targets[:, k]) for k in range(2)])
    assert logme(features=x, labels=targets) == pytest.approx(expected, abs=1e-7)


def test_logme_float32_is_close():
    rng = np.random.default_rng(7)
    x, labels = _features(rng, 300, 16, 4)
    exact = logme(features=x, labels=labels)
    assert logme(features=x, labels=labels, dtype=torch.float32) == pytest.approx(exact, rel=1e-3)


def _hscore_numpy(x, labels):
    covf = np.cov(x, rowvar=False)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    return np.trace(np.linalg.pinv(covf, rcond=1e-15) @ np.cov(means[labels], rowvar=False))


@pytest.mark.parametrize("rank", [None, 3])
def test_hscore_matches_pinv_formula(rank):
    rng = np.random.default_rng(11)
    x, labels = _features(rng, 200, 8, 4, rank)
    assert hscore(features=x, labels=labels) == pytest.approx(_hscore_numpy(x, labels), rel=1e-8)


def test_trace_pinv_quadratic_both_routes(monkeypatch):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(30, 6))
    rows = rng.normal(size=(4, 6))
    expected = np.trace(rows @ np.linalg.pinv(a.T @ a) @ rows.T)
    gram, r = torch.from_numpy(a.T @ a), torch.from_numpy(rows)
    assert float(trace_pinv_quadratic(gram, r)) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(hscore_module, "_MAX_CONDITION_BOUND", 0.0)  # force the eigh route
    assert float(trace_pinv_quadratic(gram, r)) == pytest.approx(expected, rel=1e-10)


def test_hscore_warns_that_models_tie_when_n_not_above_d():
    rng = np.random.default_rng(4)
    x, labels = _features(rng, 20, 30, 4)
    with pytest.warns(HScoreTieWarning, match=r"N=20 samples <= D\+1=31.*C-1=3"):
        value = hscore(features=x, labels=labels)
    assert value == pytest.approx(3.0, rel=1e-9)
    x, labels = _features(rng, 40, 30, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HScoreTieWarning)
        hscore(features=x, labels=labels)


def _transrate_numpy(x, labels, eps=1e-4):
    def rate(z):
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]

    x = x - x.mean(axis=0)
    classes = np.unique(labels)
    return rate(x) - np.mean([rate(x[labels == c]) for c in classes])


@pytest.mark.parametrize("batch_elements", [1 << 24, 40])
def test_transrate_matches_slogdet_with_unbalanced_classes(monkeypatch, batch_elements):
    # Sizes straddle D: a class with n_c >= D, several buckets of small ones, a singleton.
    monkeypatch.setattr(transrate_module, "_BATCH_ELEMENTS", batch_elements)
    rng = np.random.default_rng(9)
    sizes = [1, 2, 3, 5, 6, 9, 14, 40]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = np.maximum(rng.normal(size=(labels.size, 12)) + rng.normal(size=(len(sizes), 12))[labels], 0.0)
    expected = _transrate_numpy(x, labels)
    assert transrate(features=x, labels=labels) == pytest.approx(expected, rel=1e-10)
    order = rng.permutation(labels.size)  # sample order must not matter
    assert transrate(features=x[order], labels=labels[order]) == pytest.approx(expected, rel=1e-10)
