"""Hostile inputs to re-ranking: fusion weights outside [0, 1] or NaN, non-finite or misshapen
coarse scores, re-rankers of another zoo (one-line errors, never a silently wrong ranking)."""

from __future__ import annotations

import math

import pytest
import torch

from spider.config import check, compose
from spider.errors import ConfigError
from spider.modules import ReRanker, ReRanking, ScorerInputError, TokenScorer

M, DG, C = 4, 8, 3
DIMS = [5, 6, 5, 6]
SMALL = dict(dim=16, heads=2, head_hidden=8)


def scorer(**kwargs) -> ReRanker:
    return ReRanker(M, DG, model_dims=DIMS, **SMALL, **kwargs).eval()


def specific(top: torch.Tensor) -> torch.Tensor:
    return torch.zeros(len(top), C, max(DIMS))


@pytest.mark.parametrize("weight", [-0.1, 1.5, math.nan, math.inf])
def test_bad_weights_are_one_line_errors(weight):
    with pytest.raises(ConfigError, match="model.rerank_weight: expected a number in \\[0, 1\\]"):
        scorer(rerank_weight=weight)
    with pytest.raises(ScorerInputError, match="weight: expected a number in \\[0, 1\\]"):
        scorer().rerank(torch.randn(C, DG), None, 2, specific, weight=weight)


@pytest.mark.parametrize("bad", [torch.tensor([0.0, math.nan, 1.0, 2.0]), torch.tensor([0.0, math.inf, 1.0, 2.0])])
def test_non_finite_coarse_scores_are_rejected(bad):
    with pytest.raises(ScorerInputError, match="coarse: expected finite scores"):
        scorer().rerank(torch.randn(C, DG), None, 2, specific, bad)


def test_misshapen_coarse_scores_are_rejected():
    with pytest.raises(ScorerInputError, match="coarse: expected shape"):
        scorer().rerank(torch.randn(C, DG), None, 2, specific, torch.zeros(M + 1))


def test_reranking_needs_rerankers_of_the_same_zoo():
    with pytest.raises(ScorerInputError, match="at least one re-ranker"):
        ReRanking(TokenScorer(M, DG, **SMALL), [])
    with pytest.raises(ScorerInputError, match="different zoos"):
        ReRanking(TokenScorer(M + 1, DG, **SMALL), [scorer()])
    with pytest.raises(ScorerInputError, match="different zoos"):  # as many PTMs, other ones
        ReRanking(TokenScorer(M, DG, model_names=list("abcd"), **SMALL), [scorer(model_names=list("abce"))])


@pytest.mark.parametrize("value", ["2", "-1", "nan"])
def test_config_rejects_a_bad_rerank_weight(value):
    with pytest.raises(ConfigError, match="'model.rerank_weight': expected a float in \\[0, 1\\]"):
        check(compose(["model=reranker", f"model.rerank_weight={value}"]))
