import itertools
import math

import numpy as np
import pytest
import torch

from spider.aggregate import (
    Aggregate,
    AggregationInputError,
    borda,
    copeland,
    get_aggregator,
    list_aggregators,
)
from spider.errors import RegistryError

nan = math.nan


def copeland_by_loops(scores):
    """Eq. 8 written pair by pair, as the specification reads (NaN/ties abstain)."""
    scores = np.asarray(scores, dtype=float)
    k, m = scores.shape
    scored = ~np.isnan(scores).all(axis=0)
    out = np.full(m, nan)
    for i in range(m):
        if not scored[i]:
            continue
        total = 0.0
        for j in range(m):
            if j == i or not scored[j]:
                continue
            above = sum(scores[q, i] > scores[q, j] for q in range(k))
            below = sum(scores[q, i] < scores[q, j] for q in range(k))
            total += 1.0 if above > below else 0.5 if above == below else 0.0
        out[i] = total
    return out


def test_unanimous_methods_give_the_common_order():
    scores = [[0.1, 0.9, 0.5, 0.3], [1.0, 4.0, 3.0, 2.0], [-5.0, 0.0, -1.0, -2.0]]
    agg = copeland(scores)
    np.testing.assert_array_equal(agg.scores, [0.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(agg.ranking, [1, 2, 3, 0])
    assert agg.scores.dtype == np.float64 and agg.ranking.dtype == np.int64


def test_condorcet_cycle_ties_everyone_and_ranks_by_index():
    # a > b > c, b > c > a, c > a > b: every pairwise majority is 2-1 and they form a cycle.
    scores = [[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [2.0, 1.0, 3.0]]
    agg = copeland(scores)
    np.testing.assert_array_equal(agg.scores, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(agg.ranking, [0, 1, 2])  # Borda ties too, then index


def test_a_method_tying_two_models_abstains_on_that_pair():
    # Method 0 ties models 0 and 1; method 1 prefers 1 -> 1 beats 0 by 1 vote to 0.
    scores = [[5.0, 5.0, 1.0], [2.0, 3.0, 1.0]]
    np.testing.assert_array_equal(copeland(scores).scores, [1.0, 2.0, 0.0])
    # Two methods disagree, the third ties: the vote is split 1-1, a majority tie worth 0.5.
    scores = [[2.0, 1.0], [1.0, 2.0], [7.0, 7.0]]
    np.testing.assert_array_equal(copeland(scores).scores, [0.5, 0.5])


def test_majority_is_taken_among_methods_expressing_a_preference():
    # Model 1 has NaN for methods 0 and 1; only method 2 compares it with model 0 and wins.
    scores = [[3.0, nan, 1.0], [3.0, nan, 1.0], [1.0, 2.0, 0.0]]
    agg = copeland(scores)
    np.testing.assert_array_equal(agg.scores, [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(agg.ranking, [1, 0, 2])


def test_all_nan_model_is_unscored_ranks_last_and_changes_nothing_else():
    scores = np.array([[1.0, nan, 3.0, 2.0], [1.0, nan, 2.0, 3.0], [3.0, nan, 2.0, 1.0]])
    agg = copeland(scores)
    without = copeland(scores[:, [0, 2, 3]])
    assert np.isnan(agg.scores[1])
    np.testing.assert_array_equal(agg.scores[[0, 2, 3]], without.scores)
    assert agg.ranking[-1] == 1
    assert np.isnan(borda(scores).scores[1]) and borda(scores).ranking[-1] == 1


def test_pair_with_no_common_method_is_a_tie():
    # Method 0 scored only model 0, method 1 only model 1: nobody compares them.
    agg = copeland([[1.0, nan], [nan, 1.0]])
    np.testing.assert_array_equal(agg.scores, [0.5, 0.5])


def test_single_method_is_its_own_ranking_with_half_points_for_ties():
    agg = copeland([[0.2, 0.7, 0.2, 0.9]])
    np.testing.assert_array_equal(agg.scores, [0.5, 2.0, 0.5, 3.0])
    np.testing.assert_array_equal(agg.ranking, [3, 1, 0, 2])


def test_equal_copeland_scores_are_ordered_by_borda_then_index():
    scores = [[2.0, 2.0, 2.0, 3.0], [3.0, 0.0, 3.0, 1.0], [3.0, 2.0, 0.0, 3.0]]
    agg = copeland(scores)
    np.testing.assert_array_equal(agg.scores, [2.5, 0.5, 0.5, 2.5])
    np.testing.assert_allclose(borda(scores).scores, [2.0, 2 / 3, 7 / 6, 13 / 6])
    np.testing.assert_array_equal(agg.ranking, [3, 0, 2, 1])


def test_borda_is_mean_points_and_rescales_methods_with_missing_models():
    np.testing.assert_allclose(borda([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]]).scores, [1.0, 1.5, 0.5])
    # Method 1 only scored models 1 and 2 (2 of 3): its single win is worth 2 points.
    np.testing.assert_allclose(borda([[3.0, 2.0, 1.0], [nan, 1.0, 0.0]]).scores, [2.0, 1.5, 0.0])


def test_matches_pairwise_loops_on_random_scores_with_ties_and_nans():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, m = rng.integers(1, 6), rng.integers(1, 9)
        scores = rng.integers(0, 4, size=(k, m)).astype(float)
        scores[rng.random((k, m)) < 0.2] = nan
        agg = copeland(scores)
        np.testing.assert_array_equal(agg.scores, copeland_by_loops(scores))
        assert sorted(agg.ranking.tolist()) == list(range(m))
        ordered = agg.scores[agg.ranking]
        finite = ordered[~np.isnan(ordered)]
        assert np.all(np.diff(finite) <= 0) and np.isnan(ordered[len(finite):]).all()


def test_batched_torch_input_matches_per_task_numpy_and_keeps_torch():
    scores = torch.randint(0, 3, (4, 3, 6)).double()
    scores[0, :, 2] = torch.nan
    agg = copeland(scores)
    assert isinstance(agg.scores, torch.Tensor) and agg.scores.shape == (4, 6)
    assert agg.ranking.dtype == torch.int64
    for b in range(4):
        single = copeland(scores[b].numpy())
        np.testing.assert_array_equal(agg.scores[b].numpy(), single.scores)
        np.testing.assert_array_equal(agg.ranking[b].numpy(), single.ranking)


def test_registry_and_bad_input():
    assert {"borda", "copeland"} <= set(list_aggregators())
    assert get_aggregator("copeland") is copeland
    assert isinstance(get_aggregator("borda")([[1.0, 2.0]]), Aggregate)
    with pytest.raises(RegistryError, match="unknown aggregator"):
        get_aggregator("kemeny")
    for bad in ([1.0, 2.0], np.zeros((2, 0)), [["a", "b"]]):
        with pytest.raises(AggregationInputError, match="scores"):
            copeland(bad)


@pytest.mark.parametrize("aggregator", [copeland, borda])
def test_input_arrays_are_not_modified(aggregator):
    scores = np.array([[1.0, nan, 2.0], [2.0, 1.0, nan]])
    before = scores.copy()
    aggregator(scores)
    np.testing.assert_array_equal(scores, before)


def test_permuting_models_permutes_scores():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 7))
    for perm in itertools.islice(itertools.permutations(range(7)), 0, 50, 7):
        perm = list(perm)
        permuted = copeland(scores[:, perm]).scores
        np.testing.assert_array_equal(permuted, copeland(scores).scores[perm])
