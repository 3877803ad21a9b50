"""Hostile settings and inputs of the hub-scale ranking index (``spider.modules.zoo_index``)."""

from __future__ import annotations

import pytest
import torch

from spider.errors import ConfigError, SpiderError
from spider.modules import ReRanker, TokenScorer
from spider.modules.ensemble import ScorerEnsemble
from spider.modules.zoo_index import ZooIndex


@pytest.fixture
def scorer():
    torch.manual_seed(0)
    return TokenScorer(num_models=50, task_dim=8, dim=8, heads=2).eval()


def test_scorers_with_other_maths_are_refused(scorer):
    reranker = ReRanker(num_models=4, task_dim=8, dim=8, heads=2, model_dims=[8, 8, 8, 8])
    for other in (reranker, ScorerEnsemble([scorer]), torch.nn.Linear(2, 2)):
        with pytest.raises(ConfigError, match="ZooIndex: expected a TokenScorer"):
            ZooIndex(other)


@pytest.mark.parametrize("name, value", [("anchors", 0), ("pool", -1), ("chunk", 0), ("pool", 2.5)])
def test_non_positive_settings_are_refused(scorer, name, value):
    with pytest.raises(ConfigError, match=f"{name}: expected an integer >= 1"):
        ZooIndex(scorer, **{name: value})


def test_bad_task_inputs_fail_in_one_line(scorer):
    index = ZooIndex(scorer, anchors=4)
    mask = torch.ones(1, 3, dtype=torch.bool)
    cases = [
        (torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), "expected one task"),
        (torch.randn(1, 3, 5), mask, "task_dim"),
        (torch.randn(1, 3, 8), torch.zeros(1, 3, dtype=torch.bool), "at least one real class"),
        (torch.ones(1, 3, 8, dtype=torch.long), mask, "floating-point"),
    ]
    for tokens, task_mask, fragment in cases:
        with pytest.raises(SpiderError, match=fragment) as err:
            index.rank(tokens, task_mask)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="pool: expected an integer >= 1"):
        index.rank(torch.randn(1, 3, 8), mask, pool=0)
