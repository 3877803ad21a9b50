"""``experiments/zoo40/variance_probes.py``: bank labels cut to a rank keep each task's mean and
restore the library function; shrinking a scorer's stored scores ranks as the scorer itself does."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from spider import paths

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import variance_probes  # noqa: E402


def test_low_rank_labels_cut_the_centred_matrix_and_keep_task_means(monkeypatch):
    import spider.datamodules.episodes as episodes
    from spider.datamodules.label_sources import TrainingLabels

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 4)) * 10 + 50
    labels = TrainingLabels([json.dumps({"classes": [["d", i]]}) for i in range(6)], scores, "finetune")
    real = lambda *a, **k: labels  # noqa: E731
    monkeypatch.setattr(episodes, "training_labels", real)
    with variance_probes.low_rank_labels(1):
        cut = episodes.training_labels("finetune", None).scores
    assert episodes.training_labels is real  # restored
    np.testing.assert_allclose(cut.mean(1), scores.mean(1))
    assert np.linalg.matrix_rank(cut - cut.mean(1, keepdims=True), tol=1e-8) == 1
    with variance_probes.low_rank_labels(4):  # full rank: nothing cut
        np.testing.assert_allclose(episodes.training_labels("finetune", None).scores, scores)


def test_shrinking_stored_scores_ranks_as_the_scorer_does():
    from spider.modules import TokenScorer

    prior = [3.0, 1.0, 2.0, 0.0]
    scorer = TokenScorer(4, 8, dim=16, dropout=0.0, rank_prior=prior, rank_prior_weight=0.0).eval()
    scorer.score_spread.fill_(0.7)
    tokens, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        raw = scorer(tokens, mask).double().numpy()
        scorer.set_rank_prior_weight(0.75)
        shrunk = scorer(tokens, mask).double().numpy()
    stored = variance_probes.Shrinkable(raw, float(scorer.score_spread), scorer.rank_prior.double().numpy())
    np.testing.assert_allclose(stored.at(0.0), raw)
    np.testing.assert_allclose(stored.at(0.75), shrunk, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stored.at(0.5, np.zeros(4)), raw)  # a prior of zeros shifts nothing


def test_bagged_labels_resample_tasks_by_the_fits_seed_and_restore_the_library(monkeypatch):
    import spider.datamodules.episodes as episodes
    from spider.datamodules.label_sources import TrainingLabels

    texts = [json.dumps({"classes": [["d", i]]}) for i in range(40)]
    scores = np.arange(40 * 3, dtype=np.float64).reshape(40, 3)
    real = lambda *a, **k: TrainingLabels(texts, scores, "finetune")  # noqa: E731
    monkeypatch.setattr(episodes, "training_labels", real)

    def draw(seed):
        torch.manual_seed(seed)
        with variance_probes.bagged_labels():
            return episodes.training_labels("finetune", None)

    a, again, b = draw(100), draw(100), draw(101)
    assert episodes.training_labels is real  # restored
    assert a.spec_texts == again.spec_texts and a.spec_texts != b.spec_texts  # one resample per seed
    assert len(a.spec_texts) == 40 and len(set(a.spec_texts)) < 40  # with replacement
    for text, row in zip(a.spec_texts, a.scores):  # each task keeps its own labels
        np.testing.assert_array_equal(row, scores[texts.index(text)])
