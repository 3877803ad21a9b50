"""``experiments/zoo40/held_out_domain.py``: fits leave out every bank task with a class from a pool
dataset of the target's domain, and the report's fusion setting is read back from its results."""

from __future__ import annotations

import json
import sys

import numpy as np

from spider import paths

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import held_out_domain  # noqa: E402


def test_without_domain_drops_the_tasks_of_that_domain_only(monkeypatch):
    import spider.datamodules.episodes as episodes
    from spider.datamodules.label_sources import TrainingLabels

    texts = [json.dumps({"classes": classes}) for classes in (
        [["mnist", 0], ["mnist", 1]], [["cifar10", 2], ["cifar10", 3]], [["mnist", 2], ["tiny", 5]])]
    labels = TrainingLabels(texts, np.arange(6.0).reshape(3, 2), "finetune")
    monkeypatch.setattr(episodes, "training_labels", lambda *a, **k: labels)
    domains = {"mnist": "handwritten digits", "cifar10": "photos", "tiny": "photos"}
    with held_out_domain.without_domain(domains, "photos"):
        kept = episodes.training_labels("finetune", None)
    assert kept.spec_texts == texts[:1] and kept.scores.tolist() == [[0.0, 1.0]]
    assert episodes.training_labels("finetune", None) is labels  # restored


def test_report_fusion_reads_the_every_ptm_winner(tmp_path):
    results = tmp_path / "results.json"
    assert held_out_domain._report_fusion(results) is None
    results.write_text(json.dumps({"forward_rerank_ablation": [
        {"setting": "top 3: gbc, w = 0.5", "winner": True},
        {"setting": "top every PTM: logme, w = 0.25", "winner": False},
        {"setting": "top every PTM: gbc, w = 0.75", "winner": True}]}))
    assert held_out_domain._report_fusion(results) == ("gbc", 0.75)
