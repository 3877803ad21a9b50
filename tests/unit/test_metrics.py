import math

import numpy as np
import pytest
import scipy.stats
import torch

from spider.metrics import (
    PROTOCOLS,
    MetricInputError,
    PearsonPerTask,
    SpearmanPerTask,
    Top1Regret,
    TopKHit,
    WeightedTau,
)
from spider.metrics import functional as F

nan = math.nan


def random_pair(rng, n):
    """Two vectors of length n, often with heavy ties (few distinct values)."""
    def one():
        if rng.random() < 0.6:
            return rng.integers(0, rng.integers(1, 6), n).astype(float)
        return rng.normal(size=n)
    return one(), one()


def assert_same(ours, theirs, tol=1e-12):
    ours, theirs = float(ours), float(theirs)
    if math.isnan(theirs):
        assert math.isnan(ours)
    else:
        assert abs(ours - theirs) <= tol, (ours, theirs)


@pytest.mark.parametrize("rank", [None, True, False])
def test_weighted_tau_equals_scipy_on_random_vectors_with_ties(rank):
    rng = np.random.default_rng(0)
    for _ in range(400):
        truth, pred = random_pair(rng, int(rng.integers(2, 25)))
        expected = scipy.stats.weightedtau(truth, pred, rank=rank).statistic
        assert_same(F.weighted_tau(pred, truth, rank=rank), expected)


def test_protocols_name_scipy_rank_arguments_and_paper_one_is_asymmetric():
    assert PROTOCOLS == {"wtau_paper": None, "wtau_symmetric": True}
    x, y = [12, 2, 1, 12, 2], [1, 4, 7, 1, 0]  # scipy's documented example
    assert_same(F.weighted_tau(y, x, rank=None), -0.4157652301037516)
    assert_same(F.weighted_tau(x, y, rank=None), -0.7181341329699028)
    assert_same(F.weighted_tau(y, x, rank=True), -0.56694968153682723)


def test_weighted_tau_treats_nan_as_smallest_like_scipy():
    x = np.array([12, 2, nan, 12, nan, -np.inf])
    y = np.array([1, 4, 7, 1, nan, 3.0])
    for rank in (None, True):
        expected = scipy.stats.weightedtau(x, y, rank=rank).statistic
        assert_same(F.weighted_tau(y, x, rank=rank), expected)


def test_weighted_tau_undefined_cases_are_nan():
    assert math.isnan(F.weighted_tau([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]))
    assert math.isnan(F.weighted_tau([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]))
    assert math.isnan(F.weighted_tau([2.0], [1.0]))
    assert float(F.weighted_tau([10.0, 20.0, 30.0], [1.0, 2.0, 3.0])) == 1.0


@pytest.mark.parametrize(
    "fn, reference",
    [
        (lambda p, t, m: F.weighted_tau(p, t, rank=None, mask=m),
         lambda t, p: scipy.stats.weightedtau(t, p, rank=None).statistic),
        (lambda p, t, m: F.weighted_tau(p, t, rank=True, mask=m),
         lambda t, p: scipy.stats.weightedtau(t, p).statistic),
        (F.pearson, lambda t, p: scipy.stats.pearsonr(t, p).statistic),
        (F.spearman, lambda t, p: scipy.stats.spearmanr(t, p).statistic),
    ],
    ids=["wtau_paper", "wtau_symmetric", "pearson", "spearman"],
)
def test_batched_masked_values_equal_scipy_on_each_tasks_present_models(fn, reference):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, (64, 12)).astype(float)
    tied = rng.integers(0, 4, (64, 12)).astype(float)
    pred = np.where(rng.random((64, 12)) < 0.5, rng.normal(size=(64, 12)), tied)
    mask = rng.random((64, 12)) < 0.8
    mask[:, :3] = True
    values = fn(torch.tensor(pred), torch.tensor(truth), torch.tensor(mask))
    assert values.shape == (64,) and values.dtype == torch.float64
    for b in range(64):
        t, p = truth[b, mask[b]], pred[b, mask[b]]
        if np.ptp(t) == 0 or np.ptp(p) == 0:
            assert math.isnan(values[b])  # scipy warns and returns NaN for constant input
            continue
        assert_same(values[b], reference(t, p))


def test_masked_entries_are_ignored_whatever_their_values():
    truth = torch.tensor([[70.0, 80.0, 90.0, 60.0]])
    pred = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[True, True, True, False]])
    junk = pred.clone()
    junk[0, 3] = 1e9
    for fn in (F.weighted_tau, F.pearson, F.spearman, F.top1_regret):
        assert float(fn(pred, truth, mask=mask)) == float(fn(junk, truth, mask=mask))
    assert float(F.weighted_tau(pred, truth, mask=mask)) == 1.0
    assert float(F.top1_regret(pred, truth, mask=mask)) == 0.0
    assert float(F.top1_regret(pred, truth)) == 30.0


def test_top1_regret_and_ties_in_the_prediction():
    truth = [80.0, 90.0, 85.0]
    assert float(F.top1_regret([0.0, 1.0, 0.5], truth)) == 0.0
    assert float(F.top1_regret([0.9, 0.1, 0.5], truth)) == 10.0
    # Models 0 and 2 tie at the top: expected regret of a random pick = (10 + 5) / 2.
    assert float(F.top1_regret([0.7, 0.1, 0.7], truth)) == 7.5
    assert math.isnan(F.top1_regret([1.0, 2.0], [1.0, 2.0], mask=[False, False]))


def test_topk_hit_hand_examples():
    truth = [80.0, 90.0, 85.0, 70.0]
    pred = [0.9, 0.5, 0.7, 0.1]  # the best model (1) is predicted third
    assert [float(F.topk_hit(pred, truth, k)) for k in (1, 2, 3, 4, 10)] == [0, 0, 1, 1, 1]
    # Model 1 ties with model 0 for first place: a random pick finds it half the time.
    assert float(F.topk_hit([0.9, 0.9, 0.7, 0.1], truth, 1)) == 0.5
    assert float(F.topk_hit([0.9, 0.9, 0.7, 0.1], truth, 2)) == 1.0
    # Three-way tie for one slot after one sure model: 1/3.
    assert float(F.topk_hit([0.5, 0.5, 0.9, 0.5], truth, 2)) == pytest.approx(1 / 3)
    # Two truly best models (tied accuracy); either one counts.
    assert float(F.topk_hit([0.1, 0.9, 0.5], [90.0, 90.0, 10.0], 1)) == 1.0
    # Both truly best inside a 4-way tie for 2 slots: 1 - C(2,2)/C(4,2) = 5/6.
    assert float(F.topk_hit([0.5] * 4, [90.0, 90.0, 1.0, 1.0], 2)) == pytest.approx(5 / 6)
    with pytest.raises(MetricInputError, match="k must be a positive integer"):
        F.topk_hit(pred, truth, 0)


def test_topk_hit_tie_probability_matches_enumeration():
    rng = np.random.default_rng(2)
    for _ in range(100):
        truth = rng.integers(0, 3, 6).astype(float)
        pred = rng.integers(0, 3, 6).astype(float)
        k = int(rng.integers(1, 5))
        best = set(np.flatnonzero(truth == truth.max()))
        # Enumerate all tie-breaks: random key shuffles tied predictions.
        hits = []
        for perm in __import__("itertools").permutations(range(6)):
            order = sorted(range(6), key=lambda i: (-pred[i], perm[i]))
            hits.append(bool(best & set(order[:k])))
        assert float(F.topk_hit(pred, truth, k)) == pytest.approx(np.mean(hits), abs=1e-12)


def test_bad_inputs_raise_metric_input_errors():
    with pytest.raises(MetricInputError, match="same shape"):
        F.pearson([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="mask must be boolean"):
        F.spearman([1.0, 2.0], [1.0, 2.0], mask=[1, 1])
    with pytest.raises(MetricInputError, match="rank must be"):
        F.weighted_tau([1.0, 2.0], [1.0, 2.0], rank="yes")
    with pytest.raises(MetricInputError, match="scalar"):
        F.pearson(2.0, 1.0)


def scipy_task_values(truth, pred, mask, reference):
    out = []
    for t, p, m in zip(truth, pred, mask):
        t, p = t[m], p[m]
        out.append(nan if len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0 else reference(t, p))
    return np.array(out)


METRIC_CASES = [
    (lambda: WeightedTau(), lambda t, p: scipy.stats.weightedtau(t, p, rank=None).statistic),
    (lambda: WeightedTau(rank=True), lambda t, p: scipy.stats.weightedtau(t, p).statistic),
    (PearsonPerTask, lambda t, p: scipy.stats.pearsonr(t, p).statistic),
    (SpearmanPerTask, lambda t, p: scipy.stats.spearmanr(t, p).statistic),
    (Top1Regret, lambda t, p: t.max() - t[np.argmax(p)]),
    (lambda: TopKHit(3), lambda t, p: float(np.argmax(t) in np.argsort(-p)[:3])),
]


@pytest.mark.parametrize("make, reference", METRIC_CASES,
                         ids=["wtau_paper", "wtau_sym", "pearson", "spearman", "regret", "top3"])
def test_metric_classes_average_per_task_values_over_batches(make, reference):
    rng = np.random.default_rng(3)
    truth = rng.normal(70, 10, (30, 9))  # continuous: no ties, so argmax references are exact
    pred = rng.normal(size=(30, 9)).astype(np.float32).astype(np.float64)
    mask = rng.random((30, 9)) < 0.85
    mask[-1] = False  # an empty task: undefined, skipped
    metric = make()
    for rows in (slice(0, 7), slice(7, 20), slice(20, 30)):
        metric.update(torch.tensor(pred[rows], dtype=torch.float32), torch.tensor(truth[rows]),
                      torch.tensor(mask[rows]))
    expected = scipy_task_values(truth, pred, mask, reference)
    assert float(metric.compute()) == pytest.approx(np.nanmean(expected), abs=1e-12)
    assert int(metric.num_undefined) == int(np.isnan(expected).sum()) >= 1
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(metric.compute())


def test_metric_class_without_mask_and_metadata():
    metric = WeightedTau()
    metric.update(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[1.0, 2.0, 3.0]]))
    assert float(metric.compute()) == 1.0
    assert WeightedTau.higher_is_better and not Top1Regret.higher_is_better
    with pytest.raises(MetricInputError, match=r"\[B tasks, M models\]"):
        metric.update(torch.zeros(3), torch.zeros(3))
    with pytest.raises(MetricInputError, match="k must be"):
        TopKHit(0)
