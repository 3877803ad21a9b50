"""``experiments/zoo40/propagation.py``: Gaussian propagation of a top-k budget to every PTM."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from spider import paths

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import propagation  # noqa: E402


def test_observing_a_ptm_moves_its_correlated_twin_and_not_the_others():
    cov = np.eye(4)
    cov[0, 3] = cov[3, 0] = 0.9  # PTM 3 behaves like PTM 0 across the bank
    post = propagation.propagate(np.zeros(4), cov, np.array([0]), np.array([2.0]), shrink=0.0)
    assert post[0] == 2.0
    assert post[3] == pytest.approx(1.8)
    assert post[1] == post[2] == 0.0
    anti = cov.copy()
    anti[0, 3] = anti[3, 0] = -0.9
    assert propagation.propagate(np.zeros(4), anti, np.array([0]), np.array([2.0]), shrink=0.0)[3] == pytest.approx(-1.8)


def test_full_shrinkage_leaves_unobserved_ptms_at_their_mean():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 5))
    cov = np.cov(a, rowvar=False)
    mean = rng.normal(size=5)
    post = propagation.propagate(mean, cov, np.array([1, 3]), np.array([5.0, -5.0]), shrink=1.0)
    np.testing.assert_allclose(post[[0, 2, 4]], mean[[0, 2, 4]])
    np.testing.assert_allclose(post[[1, 3]], [5.0, -5.0])


def test_observing_what_was_expected_changes_nothing():
    rng = np.random.default_rng(1)
    cov = np.cov(rng.normal(size=(30, 6)), rowvar=False)
    mean = rng.normal(size=6)
    top = np.array([4, 0, 2])
    np.testing.assert_allclose(propagation.propagate(mean, cov, top, mean[top], shrink=0.1), mean)


def test_bank_covariance_fills_a_missing_run_with_its_tasks_mean():
    acc = np.array([[90.0, 80.0, 70.0], [60.0, np.nan, 80.0], [75.0, 85.0, 95.0]])
    cov = propagation.bank_covariance(acc)
    assert cov.shape == (3, 3) and np.isfinite(cov).all()
    filled = acc.copy()
    filled[1, 1] = 70.0
    np.testing.assert_allclose(cov, np.cov(propagation.zscore(filled), rowvar=False))


def test_forward_values_take_the_baselines_order_and_keep_mean_and_spread():
    pred = np.array([5.0, 4.0, 3.0, 0.0, -1.0])
    top = np.array([0, 1, 2])
    baseline = np.array([1.0, 3.0, 2.0, 9.0, 9.0])  # PTMs 3 and 4 did not run: their scores are unused
    values = propagation.forward_values(pred, baseline, top, weight=1.0)
    main = propagation.zscore(pred)[top]
    assert np.argsort(-values).tolist() == [1, 2, 0]
    assert values.mean() == pytest.approx(main.mean()) and values.std() == pytest.approx(main.std())
    np.testing.assert_allclose(propagation.forward_values(pred, baseline, top, weight=0.0), main)


def test_a_failed_baseline_score_ranks_below_every_other():
    s = propagation.finite_scores(np.array([[1.0, np.nan, -2.0], [np.inf, 0.5, 0.2]]))
    assert np.isfinite(s).all()
    assert s[0, 1] < -2.0 and s[1, 0] < 0.2
