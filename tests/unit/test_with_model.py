"""``TokenScorer.with_model``: one more model, old scores and weights unchanged (spider.incremental)."""

import pytest
import torch

from spider.modules import ReRanker, TokenScorer
from spider.modules._checks import ScorerInputError


def _tasks(batch=3, classes=5, dim=8):
    torch.manual_seed(1)
    return torch.randn(batch, classes, dim), torch.ones(batch, classes, dtype=torch.bool)


def test_token_scorer_old_scores_unchanged(one_torch_thread):
    torch.manual_seed(0)
    scorer = TokenScorer(3, 8, dim=16, model_names=["a", "b", "c"], model_prior=[1.0, 2.0, 4.0]).eval()
    grown = scorer.with_model("d", prior=3.0).eval()
    x, mask = _tasks()
    assert grown.hparams.model_names == ["a", "b", "c", "d"] and grown.num_models == 4
    assert torch.equal(grown(x, mask)[:, :3], scorer(x, mask))
    # the old standardisation is kept; the new value is standardised with the old mean and std
    assert torch.equal(grown.model_prior[:3], scorer.model_prior)
    old = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert grown.model_prior[3].item() == pytest.approx(float((3.0 - old.mean()) / old.std(unbiased=False)))
    assert torch.allclose(grown.model_tokens[3], scorer.model_tokens.mean(0))
    for key, value in scorer.state_dict().items():
        if key not in ("model_tokens", "model_prior"):
            assert torch.equal(grown.state_dict()[key], value), key


def test_reranker_grows_its_projections(one_torch_thread):
    torch.manual_seed(0)
    scorer = ReRanker(2, 8, model_dims=[4, 6], dim=16, model_names=["a", "b"]).eval()
    grown = scorer.with_model("c", model_dim=9).eval()
    assert grown.hparams.model_dims == [4, 6, 9] and grown.specific_weight.shape == (3, 9, 16)
    assert torch.equal(grown.specific_weight[:2, :6], scorer.specific_weight)
    assert not grown.specific_weight[:2, 6:].any()
    assert grown.specific_weight[2, :9].abs().sum() > 0
    x, mask = _tasks()
    specific = torch.randn(3, 1, 5, 9)
    models = torch.tensor([[1], [0], [1]])
    # Zero-padded feature columns add exact zeros, but the longer dot products may be summed in
    # another order (BLAS kernels by width): equal up to float32 rounding, not bit for bit.
    torch.testing.assert_close(grown(x, mask, models, specific)[:, :2], scorer(x, mask, models, specific[..., :6]),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "a"}, "already ranked"),
    ({"name": "z"}, "finite prior"),
    ({"name": "z", "prior": float("nan")}, "finite prior"),
])
def test_bad_additions(kwargs, message):
    scorer = TokenScorer(2, 8, dim=16, model_names=["a", "b"], model_prior=[0.0, 1.0])
    with pytest.raises(ScorerInputError, match=message):
        scorer.with_model(**kwargs)


def test_reranker_needs_the_width():
    scorer = ReRanker(2, 8, model_dims=[4, 6], dim=16, model_names=["a", "b"])
    with pytest.raises(ScorerInputError, match="model_dim"):
        scorer.with_model("c")


def test_without_names():
    with pytest.raises(ScorerInputError, match="model names"):
        TokenScorer(2, 8, dim=16).with_model("c")
