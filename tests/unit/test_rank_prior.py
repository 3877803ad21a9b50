"""The rank prior of ``TokenScorer``: rankings shrunk towards a static prior, never training."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from spider.errors import ConfigError
from spider.incremental import _prior_value
from spider.modules import ReRanker, TokenScorer
from spider.modules._checks import ScorerInputError
from spider.modules.token_scorer import spread_sums
from spider.modules.zoo_index import ZooIndex
from spider.priors import PriorInputs

PRIOR = [1.0, 2.0, 3.0, 4.0]


def _z(values):
    t = torch.tensor(values)
    return (t - t.mean()) / t.std(unbiased=False)


def _tokens(b=3, c=5, dg=8, seed=0):
    torch.manual_seed(seed)
    return torch.randn(b, c, dg), torch.ones(b, c, dtype=torch.bool)


def _pair(weight=0.5, spread=2.0):
    """A plain scorer and the same weights with a rank prior of the given spread."""
    plain = TokenScorer(4, 8, dim=16, dropout=0.0)
    shrunk = TokenScorer(4, 8, dim=16, dropout=0.0, rank_prior=PRIOR, rank_prior_weight=weight)
    shrunk.load_state_dict(plain.state_dict(), strict=False)
    shrunk.score_spread.fill_(spread)
    return plain, shrunk


def test_rank_prior_shifts_eval_scores_by_the_scaled_standardised_prior():
    x, mask = _tokens()
    plain, shrunk = _pair(weight=0.75, spread=2.0)
    plain.eval(), shrunk.eval()
    expected = (0.75 / 0.25) * 2.0 * _z(PRIOR).expand(3, 4)
    assert torch.allclose(shrunk(x, mask) - plain(x, mask), expected, atol=1e-5)
    assert torch.allclose(shrunk.forward_reference(x, mask), shrunk(x, mask), atol=1e-5)
    assert "rank_prior" not in plain.state_dict()  # old checkpoints keep their keys


def test_rank_prior_never_reaches_training_scores():
    x, mask = _tokens()
    plain, shrunk = _pair()
    plain.train(), shrunk.train()
    assert torch.equal(shrunk(x, mask), plain(x, mask))


def test_weight_zero_keeps_the_scores_and_can_be_changed_for_ranking():
    x, mask = _tokens()
    plain, shrunk = _pair(weight=0.0)
    plain.eval(), shrunk.eval()
    assert torch.equal(shrunk(x, mask), plain(x, mask))
    shrunk.set_rank_prior_weight(0.5)
    assert shrunk.hparams.rank_prior_weight == 0.5
    assert torch.allclose(shrunk(x, mask) - plain(x, mask), 2.0 * _z(PRIOR).expand(3, 4), atol=1e-5)
    with pytest.raises(ConfigError, match="rank_prior_weight: expected a float in \\[0, 1\\)"):
        shrunk.set_rank_prior_weight(1.0)
    with pytest.raises(ScorerInputError, match="no rank prior"):
        plain.set_rank_prior_weight(0.5)


def test_one_static_prior_per_scorer():
    with pytest.raises(ConfigError, match="rank_prior: expected null when model_prior is set"):
        TokenScorer(4, 8, dim=16, model_prior=PRIOR, rank_prior=PRIOR)
    with pytest.raises(ConfigError, match="rank_prior_weight"):
        TokenScorer(4, 8, dim=16, rank_prior=PRIOR, rank_prior_weight=float("nan"))


def test_spread_sums_count_masked_models_and_skip_tasks_with_one():
    scores = torch.tensor([[1.0, 3.0, 100.0], [5.0, 5.0, 5.0], [2.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    total, tasks = spread_sums(scores, mask).tolist()
    assert tasks == 2 and total == pytest.approx(1.0 + 0.0)  # std of (1, 3) and of (5, 5, 5)


def test_training_measures_the_spread_of_the_last_epoch():
    x, mask = _tokens(b=8)
    targets = torch.randn(8, 4)
    batches = [{"task_tokens": x[i:i + 4], "task_mask": mask[i:i + 4], "target_scores": targets[i:i + 4],
                "model_mask": torch.ones(4, 4, dtype=torch.bool)} for i in (0, 4)]
    scorer = TokenScorer(4, 8, dim=16, dropout=0.0, lr=1e-9, weight_decay=0.0, rank_prior=PRIOR, rank_prior_weight=0.5)
    assert float(scorer.score_spread) == 0.0
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(scorer, train_dataloaders=DataLoader(batches, batch_size=None))
    scorer.train()  # training-mode scores: what the epoch saw (lr ~ 0 leaves the weights in place)
    with torch.no_grad():
        expected = scorer(x, mask).std(1, unbiased=False).mean()
    assert float(scorer.score_spread) == pytest.approx(float(expected), rel=1e-4)


def test_zoo_index_ranks_with_the_rank_prior_exactly(one_torch_thread):
    x, mask = _tokens(dg=12)
    torch.manual_seed(0)
    scorer = TokenScorer(64, 12, dim=16, heads=4, dropout=0.0, rank_prior=[float(m % 5) for m in range(64)],
                         rank_prior_weight=0.5).eval()
    scorer.score_spread.fill_(3.0)
    with torch.no_grad():
        expected = scorer(x, mask)
    torch.testing.assert_close(ZooIndex(scorer, anchors=8, chunk=16).scores(x, mask), expected, atol=1e-5, rtol=0)


def test_a_grown_scorer_keeps_the_old_models_shrunk_scores():
    x, mask = _tokens()
    shrunk = TokenScorer(4, 8, dim=16, dropout=0.0, model_names=list("abcd"), rank_prior=PRIOR, rank_prior_weight=0.5)
    shrunk.score_spread.fill_(2.0)
    grown = shrunk.with_model("e", prior=2.5).eval()
    shrunk.eval()
    assert torch.allclose(grown(x, mask)[:, :4], shrunk(x, mask), atol=1e-6)
    assert grown.hparams.rank_prior == [*PRIOR, 2.5] and float(grown.score_spread) == 2.0
    with pytest.raises(ScorerInputError, match="expected a finite prior value"):
        shrunk.with_model("e")


def test_reranker_takes_a_rank_prior():
    model = ReRanker(4, 8, model_dims=[6, 6, 6, 6], dim=16, dropout=0.0, rank_prior=PRIOR, rank_prior_weight=0.5).eval()
    model.score_spread.fill_(1.0)
    x, mask = _tokens(b=2)
    models, tokens = torch.tensor([[1, 2], [0, 3]]), torch.randn(2, 2, 5, 6)
    assert torch.allclose(model(x, mask, models, tokens), model.forward_reference(x, mask, models, tokens), atol=1e-5)


class _Data:
    """The datamodule's prior inputs over the M+1 PTMs (the new one last)."""

    def prior_inputs(self, params):
        return PriorInputs(["a", "b", "c", "new"], bank_accuracy=np.array([[50.0, 60.0, 70.0, 65.0]]))


def test_the_new_ptm_gets_its_rank_prior_on_the_checkpoints_scale():
    scorer = TokenScorer(3, 8, dim=16, model_names=["a", "b", "c"], rank_prior=[50.0, 60.0, 70.0])
    cfg = OmegaConf.create({"model": {"prior": None}, "data": {"rank_prior": "finetune_mean"}})
    assert _prior_value(scorer, cfg, _Data(), {}, None, None) == pytest.approx(65.0)
    cfg.data.rank_prior = None
    with pytest.raises(ConfigError, match="data.rank_prior is null but the checkpoint has a static prior"):
        _prior_value(scorer, cfg, _Data(), {}, None, None)
    assert _prior_value(TokenScorer(3, 8, dim=16), cfg, _Data(), {}, None, None) is None


def test_a_seed_ensemble_ranks_with_its_members_ensemble_weight():
    from spider.rank_core import load_ranker

    def scorer(seed, ensemble_weight=0.25):
        torch.manual_seed(seed)
        return TokenScorer(4, 8, dim=16, dropout=0.0, rank_prior=PRIOR, rank_prior_weight=0.5,
                           ensemble_rank_prior_weight=ensemble_weight)

    members = [scorer(0), scorer(1)]
    load_ranker(members)
    assert [m.rank_prior_weight for m in members] == [0.25, 0.25]
    alone = scorer(2)
    load_ranker([alone])  # one checkpoint is no ensemble
    assert alone.rank_prior_weight == 0.5
    explicit = [scorer(0), scorer(1)]
    load_ranker(explicit, rank_prior_weight=0.1)  # --rank-prior-weight wins
    assert [m.rank_prior_weight for m in explicit] == [0.1, 0.1]
    older = [scorer(0, None), scorer(1, None)]  # trained without one: their own weight
    load_ranker(older)
    assert [m.rank_prior_weight for m in older] == [0.5, 0.5]
    with pytest.raises(ConfigError, match="ensemble_rank_prior_weight: expected a float in"):
        scorer(0, 1.0)
    # Members that disagree on the ensemble weight: one line saying how to choose, nothing ranked.
    with pytest.raises(ConfigError, match=r"^checkpoint: the ensemble's members were trained with different "
                                          r"data.ensemble_rank_prior_weight \(0.25, None\); pass one rank_prior_weight"):
        load_ranker([scorer(0), scorer(1, None)])
    mixed = [scorer(0), scorer(1, None)]
    load_ranker(mixed, rank_prior_weight=0.3)
    assert [m.rank_prior_weight for m in mixed] == [0.3, 0.3]
