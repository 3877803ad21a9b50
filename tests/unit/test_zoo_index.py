"""``ZooIndex``: cached exact scoring equals ``TokenScorer.forward``; chunking and the two-stage
search; and the ranking path (``spider.rank_core``) that picks it for hub-sized zoos."""

from __future__ import annotations

import pytest
import torch

import spider.rank_core as rank_core
from spider.modules import TokenScorer
from spider.modules.losses import get_loss
from spider.modules.zoo_index import DEFAULT_POOL, ZooIndex


def _scorer(num_models=300, task_dim=12, dim=16, token_scale=1.0, seed=0, **options) -> TokenScorer:
    torch.manual_seed(seed)
    scorer = TokenScorer(num_models=num_models, task_dim=task_dim, dim=dim, heads=4, **options).eval()
    with torch.no_grad():  # the 0.02 initialisation is nearly linear; spread tokens like trained ones
        scorer.model_tokens.normal_(0.0, token_scale)
    return scorer


def _tasks(batch=3, classes=5, task_dim=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, classes, task_dim, generator=generator)
    mask = torch.ones(batch, classes, dtype=torch.bool)
    mask[-1, classes - 2:] = False
    tokens[-1, classes - 2:] = float("nan")  # padding must not reach the scores
    return tokens, mask


def _trained_scorer() -> TokenScorer:
    """A small scorer after 40 AdamW steps of the listwise loss on fixed random targets."""
    torch.manual_seed(3)
    scorer = TokenScorer(num_models=200, task_dim=12, dim=16, heads=4, dropout=0.0, model_prior=list(range(200)))
    loss_fn = get_loss("listwise")
    optimiser = torch.optim.AdamW(scorer.parameters(), lr=0.02)
    tokens, mask = torch.randn(8, 6, 12), torch.ones(8, 6, dtype=torch.bool)
    targets = torch.randn(8, 200)
    for _ in range(40):
        optimiser.zero_grad()
        loss_fn(scorer(tokens, mask), targets, torch.ones_like(targets, dtype=torch.bool)).backward()
        optimiser.step()
    return scorer.eval()


@pytest.mark.parametrize("options", [
    {},
    {"depth": 2},
    {"norm_first": False, "mlp_ratio": 0.0},
    {"head_hidden": 0, "model_prior": [float(m % 7) for m in range(300)], "prior_scale": 0.5},
])
def test_cached_scores_equal_forward_on_random_scorers(options, one_torch_thread):
    scorer = _scorer(**options)
    tokens, mask = _tasks()
    with torch.no_grad():
        expected = scorer(tokens, mask)
    got = ZooIndex(scorer, anchors=8, chunk=64).scores(tokens, mask)
    assert got.shape == (3, 300) and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_cached_scores_equal_forward_on_a_trained_scorer(one_torch_thread):
    scorer = _trained_scorer()
    assert scorer.prior_scale.item() != 1.0  # training moved the weights away from their initialisation
    tokens, mask = _tasks(batch=4, classes=6)
    with torch.no_grad():
        expected = scorer(tokens, mask)
    torch.testing.assert_close(ZooIndex(scorer, anchors=16, chunk=50).scores(tokens, mask), expected,
                               atol=1e-5, rtol=0)


def test_chunk_size_does_not_change_scores_or_ranking(one_torch_thread):
    scorer = _scorer(num_models=1000)
    tokens, mask = _tasks(batch=1)
    reference = ZooIndex(scorer, anchors=8, chunk=1000)
    for chunk in (7, 64, 333, 4096):
        index = ZooIndex(scorer, anchors=8, chunk=chunk)
        # The same maths on row blocks of another height: equal up to float rounding of the GEMMs.
        torch.testing.assert_close(index.scores(tokens, mask), reference.scores(tokens, mask), atol=1e-6, rtol=0)
        assert torch.equal(index.rank(tokens, mask, pool=1000).models[:20],
                           reference.rank(tokens, mask, pool=1000).models[:20])


def test_pool_of_all_models_gives_the_exact_ranking(one_torch_thread):
    scorer = _scorer(num_models=500)
    tokens, mask = _tasks(batch=1)
    index = ZooIndex(scorer, anchors=4, pool=10)
    exact = index.scores(tokens, mask)[0]
    order = torch.argsort(exact, descending=True, stable=True)
    for pool in (500, 501, 10_000):
        ranking = index.rank(tokens, mask, pool=pool)
        assert torch.equal(ranking.models, order)
        assert torch.equal(ranking.scores, exact[order])
    with torch.no_grad():
        forward = scorer(tokens, mask)[0]
    assert torch.equal(ranking.models[:10], torch.argsort(forward, descending=True, stable=True)[:10])


def test_small_pool_ranks_its_models_by_exact_scores(one_torch_thread):
    scorer = _scorer(num_models=500)
    tokens, mask = _tasks(batch=1)
    index = ZooIndex(scorer, anchors=16)
    ranking = index.rank(tokens, mask, pool=40)
    exact = index.scores(tokens, mask)[0]
    assert ranking.models.shape == (40,) and len(set(ranking.models.tolist())) == 40
    assert torch.equal(ranking.scores, exact[ranking.models])
    assert torch.equal(ranking.scores, ranking.scores.sort(descending=True).values)


def test_prescreen_is_exact_at_its_anchors(one_torch_thread):
    """With one anchor per model token (64^2 anchors: 64 coarse clusters of one token), the first-order estimate is evaluated at the token
    itself; and the estimate is a true linearisation (error shrinks quadratically)."""
    scorer = _scorer(num_models=64, model_prior=[float(m) for m in range(64)])
    tokens, mask = _tasks(batch=1)
    with torch.no_grad():
        exact = scorer(tokens, mask)[0]
    torch.testing.assert_close(ZooIndex(scorer, anchors=64 * 64).approx_scores(tokens, mask), exact, atol=1e-5, rtol=0)

    errors = []
    for step in (1e-1, 5e-2):
        near = _scorer(num_models=65)
        with torch.no_grad():
            near.model_tokens[1:] = near.model_tokens[0] + step * torch.randn(64, 16)
            exact = near(tokens, mask)[0]
        index = ZooIndex(near, anchors=1)  # every token linearised around their mean
        errors.append(float((index.approx_scores(tokens, mask) - exact).abs().max()))
    assert errors[1] < errors[0] / 2.5


def test_rank_core_keeps_the_exact_path_up_to_the_threshold(monkeypatch, one_torch_thread):
    monkeypatch.setattr(rank_core, "FAST_PATH_MIN_MODELS", 300)
    scorer = _scorer(num_models=300)
    tokens, mask = _tasks(batch=1)
    assert not rank_core.uses_index(scorer)
    ranking = rank_core.score_general(scorer, tokens, mask)
    with torch.no_grad():
        forward = scorer(tokens, mask)[0]
    order = torch.argsort(forward, descending=True, stable=True)
    assert torch.equal(ranking.models, order) and torch.equal(ranking.scores, forward[order])
    assert not hasattr(scorer, "_spider_zoo_index")


def test_rank_core_ranks_a_large_zoo_with_the_index(monkeypatch, one_torch_thread):
    monkeypatch.setattr(rank_core, "FAST_PATH_MIN_MODELS", 299)
    scorer = _scorer(num_models=300)
    tokens, mask = _tasks(batch=1)
    assert rank_core.uses_index(scorer)
    ranking = rank_core.score_general(scorer, tokens, mask)
    index = scorer._spider_zoo_index[1]
    assert rank_core.zoo_index(scorer) is index  # built once per loaded scorer
    exact = index.scores(tokens, mask)[0]
    assert torch.equal(ranking.models, torch.argsort(exact, descending=True, stable=True))  # pool >= M
    with torch.no_grad():
        scorer.model_tokens.mul_(2.0)  # new weights: the index is rebuilt
    assert rank_core.zoo_index(scorer) is not index


def test_rank_result_of_a_pruned_zoo_lists_the_pool(monkeypatch, one_torch_thread):
    monkeypatch.setattr(rank_core, "FAST_PATH_MIN_MODELS", 100)
    num = DEFAULT_POOL + 500
    scorer = _scorer(num_models=num, task_dim=4, dim=4)
    tokens, _ = _tasks(batch=1, task_dim=4)
    timings: dict[str, float] = {}
    scored = rank_core._score(scorer, tokens[0], 0, lambda m: tokens[0], timings)
    result = rank_core._result(scored, [f"ptm{m}" for m in range(num)], timings)
    assert len(result.models) == DEFAULT_POOL and result.num_models == num
    assert set(result.general_scores) == set(result.models)
    assert result.scores == sorted(result.scores, reverse=True)
    assert result.to_dict()["num_models"] == num and "index" in result.timings_ms
