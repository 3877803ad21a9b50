"""``spider.evaluate``: the one evaluation path (per-task metrics grouped by target index) and the
one batched re-rank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spider.evaluate import METRICS, evaluate, grouped_mean, rank_values, task_metrics
from spider.metrics.functional import top1_regret, weighted_tau
from spider.modules import ReRanker


def test_task_metrics_perfect_reversed_and_failed_predictions():
    truth = np.array([[90.0, 80.0, 70.0, 60.0]])
    perfect = task_metrics(truth * 2, truth)
    assert set(perfect) == set(METRICS)
    assert float(perfect["wtau_paper"][0]) == pytest.approx(1.0)
    assert float(perfect["top1_regret"][0]) == 0.0
    reverse = task_metrics(-truth, truth)
    assert float(reverse["wtau_symmetric"][0]) == pytest.approx(-1.0)
    assert float(reverse["top1_regret"][0]) == pytest.approx(30.0)
    # A failed baseline (NaN) on the best model ranks it last: the method never recommends it, so
    # it is judged on the whole zoo (as if it had scored that model lowest) and its regret is real.
    failed = task_metrics(np.array([[np.nan, 3.0, 2.0, 1.0], [np.nan] * 4]), np.vstack([truth, truth]))
    last = task_metrics(np.array([[0.0, 3.0, 2.0, 1.0]]), truth)
    for metric in METRICS:
        assert float(failed[metric][0]) == pytest.approx(float(last[metric][0]))
        assert math.isnan(float(failed[metric][1]))  # nothing scored: undefined, not a tie
    assert float(failed["top1_regret"][0]) == pytest.approx(10.0)
    assert float(failed["wtau_paper"][0]) < 0.5
    # A masked model stays out of the task whatever its prediction.
    masked = task_metrics(np.array([[np.nan, 3.0, 2.0, 1.0]]), truth, mask=np.array([[False, True, True, True]]))
    assert float(masked["wtau_paper"][0]) == pytest.approx(1.0)


def test_grouped_mean_skips_undefined_values_and_empty_groups():
    values = torch.tensor([1.0, 3.0, math.nan, 5.0])
    out = grouped_mean(values, torch.tensor([0, 0, 1, 2]), 4).tolist()
    assert out[0] == 2.0 and math.isnan(out[1]) and out[2] == 5.0 and math.isnan(out[3])


def test_evaluate_groups_tasks_by_index_and_means_over_targets():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(5, 6))
    preds = truth + rng.normal(size=(5, 6))
    indexes = [0, 0, 1, 1, 1]
    prior = rng.normal(size=6)
    table = evaluate({"m": preds, "prior": prior}, truth, indexes, ["a", "b"])
    assert set(table) == set(METRICS) and list(table["wtau_paper"]) == ["m", "prior"]
    tau = [float(weighted_tau(p, t)) for p, t in zip(preds, truth)]
    row = table["wtau_paper"]["m"]
    assert row["a"] == pytest.approx(np.mean(tau[:2])) and row["b"] == pytest.approx(np.mean(tau[2:]))
    assert row["mean"] == pytest.approx((row["a"] + row["b"]) / 2)
    # A static prior ([M]) scores every task with the same ranking.
    regret = [float(top1_regret(prior, t)) for t in truth]
    assert table["top1_regret"]["prior"]["b"] == pytest.approx(np.mean(regret[2:]))
    with pytest.raises(ValueError, match="indexes must lie in"):
        evaluate({"m": preds}, truth, [0, 0, 1, 1, 2], ["a", "b"])


def test_rank_values_sort_like_the_order():
    order = torch.tensor([[2, 0, 1], [0, 1, 2]])
    values = rank_values(order)
    assert torch.argsort(-values, dim=1).tolist() == order.tolist()


def test_batched_rerank_equals_one_task_at_a_time():
    torch.manual_seed(0)
    num_models, dims, classes = 6, [5, 7, 6, 5, 7, 6], 4
    scorer = ReRanker(num_models, 8, model_dims=dims, dim=16, depth=1, heads=2).eval()
    tokens = torch.randn(3, classes, 8)
    mask = torch.ones(3, classes, dtype=torch.bool)
    mask[1, -1] = False
    bank = torch.randn(3, num_models, classes, max(dims))

    def batch_fn(top):
        return torch.stack([bank[b, top[b]] for b in range(top.shape[0])])

    batched = scorer.rerank_batch(tokens, mask, 3, batch_fn)
    for b in range(3):
        one = scorer.rerank(tokens[b], mask[b], 3, lambda top, b=b: bank[b, top])
        assert batched.order[b].tolist() == one.order.tolist()
        # float32 kernels differ by batch shape (seen: 3e-6 apart): agreement to float32 precision
        assert torch.allclose(batched.scores[b], one.scores, rtol=1e-5, atol=1e-5)
        assert batched.rescored[b].tolist() == one.rescored.tolist()
