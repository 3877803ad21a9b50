"""Helpers of the zoo40 probes: class-subset views, seed tables, source similarity, class overlap."""

from __future__ import annotations

import sys

import numpy as np
import torch

from spider import paths

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import class_overlap  # noqa: E402
import probes  # noqa: E402
import source_similarity  # noqa: E402
import task_subsets  # noqa: E402


class SumScorer(torch.nn.Module):
    """Scores M = 2 models: the sum and the max of the first feature over the shown classes."""

    def forward(self, tokens, mask):
        x = tokens[..., 0]
        return torch.stack([x.sum(-1), x.max(-1).values], dim=-1)


def test_view_scores_average_random_class_subsets():
    centres = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 3)
    full = task_subsets.view_scores(SumScorer(), centres, None, seed=0)
    np.testing.assert_allclose(full, [45.0, 9.0])
    half = task_subsets.view_scores(SumScorer(), centres, 0.5, seed=0)
    assert half[0] < full[0] and half[1] <= full[1]  # 5 classes per view
    np.testing.assert_allclose(half, task_subsets.view_scores(SumScorer(), centres, 0.5, seed=0))  # seeded
    assert not np.allclose(half, task_subsets.view_scores(SumScorer(), centres, 0.5, seed=1))
    tiny = task_subsets.view_scores(SumScorer(), centres[:3], 0.1, seed=0)  # at least 2 classes per view
    assert tiny[0] >= 1.0


def test_seed_table_rows_and_extra_column():
    rows = [("shipped", 0.5, 0.01, 3.0), ("idea", 0.6, 0.02, 2.5)]
    assert probes.seed_table("setting", rows) == [
        "| setting | val wtau_paper | val top-1 regret |", "|---|---|---|",
        "| shipped | +0.500 ± 0.010 | 3.00 |", "| idea | +0.600 ± 0.020 | 2.50 |"]
    extra = probes.seed_table("start", [(*rows[0], ""), (*rows[1], "+0.100, 90%")], "paired")
    assert extra[0] == "| start | val wtau_paper | val top-1 regret | paired |"
    assert extra[-1] == "| idea | +0.600 ± 0.020 | 2.50 | +0.100, 90% |"


def test_source_similarity_matches_task_classes_to_each_ptms_pool_data():
    e = np.eye(4)
    datasets = {"digits": e[:2], "photos": e[2:]}  # two pool datasets of two classes each
    task = np.array([[1.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # a digit-like class, a photo class
    known = [["digits"], ["photos"], ["digits", "photos"], []]  # the last PTM: no pool data of its domains
    s = source_similarity.source_similarity(task, datasets, known)
    digit_side = (1.0 / np.linalg.norm([1.0, 0.1]) + 0.0) / 2  # best cosine per task class, averaged
    assert np.allclose(s, [digit_side, 0.5, max(digit_side, 0.5), min(digit_side, 0.5)])
    assert np.allclose(source_similarity.source_similarity(task, datasets, [[], []]), 0.0)



def test_class_overlap_consensus_lowers_only_the_ptms_that_saw_a_task():
    z = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])  # 2 bank tasks x 3 PTMs
    saw = np.array([[True, False, False], [False, False, False]])  # PTM 0 saw task 0's dataset
    np.testing.assert_allclose(class_overlap.consensus(z, saw, 0.0), [0.5, 0.5, -1.0])
    np.testing.assert_allclose(class_overlap.consensus(z, saw, 2.0), [-0.5, 0.5, -1.0])


def test_class_overlap_mean_place_is_one_based_best_first():
    values = np.array([0.1, 0.9, 0.5, 0.3])  # places: 4, 1, 2, 3
    assert class_overlap.mean_place(values, np.array([True, True, False, False])) == 2.5
    assert np.isnan(class_overlap.mean_place(values, np.zeros(4, dtype=bool)))
