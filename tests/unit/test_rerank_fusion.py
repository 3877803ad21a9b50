"""Re-ranking fuses the re-rankers' specific scores with the coarse ranking (spider.modules.reranker):
a coarse ranking from another ranker, weight 0 = the coarse ranking, re-scored PTMs can also move
down, seed ensembles of re-rankers average their standardised specific scores."""

from __future__ import annotations

import pytest
import torch

from spider.modules import ReRanker, ReRanking, TokenScorer
from spider.modules.ensemble import ScorerEnsemble

M, DG, C = 6, 8, 4
DIMS = [5, 7, 6, 5, 7, 6]
SMALL = dict(dim=16, heads=2, head_hidden=8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reranker(seed: int, **kwargs) -> ReRanker:
    torch.manual_seed(seed)
    return ReRanker(M, DG, model_dims=DIMS, **SMALL, **kwargs).eval()


def bank(seed: int = 5, tasks: int = 1) -> torch.Tensor:
    return torch.randn(tasks, M, C, max(DIMS), generator=torch.Generator().manual_seed(seed)) * 3


def z(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)


def test_weight_zero_keeps_the_coarse_ranking_of_another_ranker():
    scorer = reranker(0)
    tokens = torch.randn(C, DG)
    coarse = torch.randn(M, generator=torch.Generator().manual_seed(1))
    calls = []

    def fn(top):
        calls.append(top.tolist())
        return bank()[0, top]

    result = scorer.rerank(tokens, None, 3, fn, coarse, weight=0.0)
    assert result.order.tolist() == torch.argsort(coarse, descending=True).tolist()
    assert calls == [torch.argsort(coarse, descending=True)[:3].tolist()]  # the COARSE top 3 are re-scored
    assert torch.equal(result.general_scores, coarse)
    assert torch.allclose(result.scores, z(coarse), atol=1e-6)


def test_a_rescored_model_can_fall_below_models_that_were_not_rescored():
    """With the specific score alone (w = 1) some random task pushes a top-2 PTM below rank 2;
    permuting only the top k (the paper's Algorithm 2) never would."""
    scorer = reranker(0, rerank_weight=1.0)
    tokens = torch.randn(40, C, DG, generator=torch.Generator().manual_seed(2))
    specific = bank(3, tasks=40)
    result = scorer.rerank_batch(tokens, None, 2, lambda top: torch.stack([specific[b, top[b]] for b in range(40)]))
    positions = [result.order[b].tolist().index(m) for b in range(40) for m in torch.nonzero(result.rescored[b]).flatten().tolist()]
    assert max(positions) >= 2
    assert torch.all(torch.gather(result.scores, 1, result.order).diff(dim=1) <= 0)  # sorted by the scores


def test_reranking_averages_the_members_z_scores_over_an_ensemble_coarse_ranking():
    members = [reranker(1), reranker(2)]
    torch.manual_seed(4)
    coarse = ScorerEnsemble([TokenScorer(M, DG, **SMALL).eval(), TokenScorer(M, DG, **SMALL).eval()])
    pipeline = ReRanking(coarse, members, weight=0.25).eval()
    tokens, mask = torch.randn(C, DG), torch.ones(C, dtype=torch.bool)
    specific = bank(6)[0]
    result = pipeline.rerank(tokens, mask, 3, lambda top: specific[top])
    with torch.no_grad():
        coarse_scores = coarse(tokens[None], mask[None])[0]
        assert torch.equal(pipeline(tokens[None], mask[None])[0], coarse_scores)
        top = torch.argsort(coarse_scores, descending=True)[:3]
        spec = []
        for m in members:
            g = m(tokens[None], mask[None])[0]
            s = m(tokens[None], mask[None], top[None], specific[top][None])[0, top]
            spec.append((s - g.mean()) / g.std(unbiased=False))
    expected = z(coarse_scores)
    expected[top] = 0.75 * expected[top] + 0.25 * torch.stack(spec).mean(0)
    assert torch.allclose(result.scores, expected, atol=1e-5)
    assert result.order.tolist() == torch.argsort(expected, descending=True).tolist()
    assert set(torch.nonzero(result.rescored).flatten().tolist()) == set(top.tolist())


def test_reranking_batched_equals_one_task_at_a_time_and_defaults_to_the_members_weight():
    members = [reranker(1, rerank_weight=0.75)]
    torch.manual_seed(4)
    pipeline = ReRanking(TokenScorer(M, DG, **SMALL), members)  # train mode: re-ranking evaluates
    tokens = torch.randn(3, C, DG, generator=torch.Generator().manual_seed(8))
    mask = torch.ones(3, C, dtype=torch.bool)
    mask[1, -1] = False
    specific = bank(9, tasks=3)
    batched = pipeline.rerank_batch(tokens, mask, 2, lambda top: torch.stack([specific[b, top[b]] for b in range(3)]))
    assert pipeline.coarse.training  # mode restored
    explicit = ReRanking(pipeline.coarse, members, weight=0.75).rerank_batch(
        tokens, mask, 2, lambda top: torch.stack([specific[b, top[b]] for b in range(3)]))
    assert torch.equal(batched.scores, explicit.scores)
    for b in range(3):
        one = pipeline.rerank(tokens[b], mask[b], 2, lambda top, b=b: specific[b, top])
        assert batched.order[b].tolist() == one.order.tolist()
        assert torch.allclose(batched.scores[b], one.scores, atol=1e-6)


# ------------------------------------------------------------------ forward re-ranking (a baseline)
def test_forward_rerank_reorders_only_the_top_k_by_the_fused_z_scores():
    from spider.modules import forward_rerank

    coarse = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    forward = torch.tensor([[0.0, 0.0, 10.0, 0.0, 0.0, 99.0]])  # PTM 5 is best but never runs (k = 3)
    seen = []

    def fn(top):
        seen.append(top.tolist())
        return forward.gather(1, top)

    result = forward_rerank(coarse, 3, fn, 1.0)
    assert seen == [[[0, 1, 2]]]
    assert result.order.tolist() == [[2, 0, 1, 3, 4, 5]] and result.rescored.tolist() == [[True] * 3 + [False] * 3]
    assert torch.argsort(result.scores, descending=True, stable=True).tolist() == result.order.tolist()
    assert result.general_scores.tolist() == coarse.tolist()
    assert forward_rerank(coarse, 3, fn, 0.0).order.tolist() == [[0, 1, 2, 3, 4, 5]]  # w = 0: the coarse ranking
    # w = 0.5: the mean of the two z-scores, each over the k.
    half = forward_rerank(coarse, 3, fn, 0.5).order[0, :3].tolist()
    zc, zf = z(coarse[0, :3]), z(forward[0, :3])
    assert half == torch.argsort(0.5 * zc + 0.5 * zf, descending=True, stable=True).tolist()
    # k >= M fuses the whole ranking.
    assert forward_rerank(coarse, 10, lambda top: forward.gather(1, top), 1.0).order.tolist() == [[5, 2, 0, 1, 3, 4]]


def test_forward_rerank_puts_failed_baseline_scores_last_and_skips_unranked_ptms():
    from spider.modules import ScorerInputError, forward_rerank

    nan = float("nan")
    coarse = torch.tensor([[3.0, 2.0, 1.0, nan], [3.0, 2.0, 1.0, 0.0]])
    forward = torch.tensor([[nan, 1.0, 2.0, 50.0], [nan, nan, nan, nan]])
    result = forward_rerank(coarse, 4, lambda top: forward.gather(1, top), 1.0)
    # Row 0: PTM 3 has no coarse score (left out by a two-stage search): never re-scored, last; k
    # shrinks to the 3 ranked PTMs, and PTM 0's failed baseline score ranks it last of them.
    assert result.order[0].tolist() == [2, 1, 0, 3] and not bool(result.rescored[0, 3])
    # Row 1: the baseline failed everywhere: the coarse order stays.
    assert result.order[1, :3].tolist() == [0, 1, 2]
    for bad in ({"topk": -1}, {"weight": 1.5}, {"weight": True}):
        args = {"topk": 2, "weight": 0.5, **bad}
        with pytest.raises(ScorerInputError, match=next(iter(bad))):
            forward_rerank(coarse, args["topk"], lambda top: forward.gather(1, top), args["weight"])
    with pytest.raises(ScorerInputError, match="forward_fn"):
        forward_rerank(coarse, 2, lambda top: torch.zeros(2, 3), 0.5)


def test_fused_ranking_orders_a_novel_target_by_the_baseline_alone():
    """``spider.benchmark.forward.fused_ranking``: a target marked novel takes NOVEL_RERANK_WEIGHT
    (the baseline's own order of the k), the others the weight given."""
    import numpy as np

    from spider.benchmark.forward import fused_ranking
    from spider.modules import NOVEL_RERANK_WEIGHT

    rng = np.random.default_rng(0)
    pred, scores = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    novel = np.array([False, True, False])
    gated, ran = fused_ranking(pred, scores, 6, 0.25, novel)
    plain, plain_ran = fused_ranking(pred, scores, 6, 0.25)
    alone, _ = fused_ranking(pred, scores, 6, NOVEL_RERANK_WEIGHT)
    assert NOVEL_RERANK_WEIGHT == 1.0
    assert gated[[0, 2]].tolist() == plain[[0, 2]].tolist() and gated[1].tolist() == alone[1].tolist()
    assert np.argsort(-gated[1]).tolist() == np.argsort(-scores[1]).tolist()  # the baseline's order
    assert gated[1].tolist() != plain[1].tolist() and ran.all() and plain_ran.all()
