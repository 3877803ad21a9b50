"""``spider.familiarity``: task similarity, the training-task reference, its novelty threshold and
its checkpoint form."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from spider.errors import SpiderError
from spider.familiarity import TaskReference, unit_centres


def task_similarity(a, b):
    """The definition, pair by pair: symmetric mean best-match cosine of two tasks' unit centres."""
    cos = a @ b.T
    return float(0.5 * (cos.max(1).mean() + cos.max(0).mean()))


def _tasks(seed=0, num=6, dim=8):
    rng = np.random.default_rng(seed)
    centres = [rng.normal(size=(int(rng.integers(2, 5)), dim)) for _ in range(num)]
    datasets = [["a"], ["a"], ["b"], ["b", "c"], ["c"], ["d"]][:num]
    return centres, datasets


def test_similarity_is_one_for_the_same_classes_and_zero_for_orthogonal_ones():
    ref = TaskReference([np.eye(3)[:2], np.eye(3)[2:]], [["a"], ["b"]])
    same = np.array([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]])  # task 0's directions, other order and norms
    assert ref.similarities(same) == pytest.approx([1.0, 0.0], abs=1e-6)
    mixed = np.array([[1.0, 1.0, 0.0]])
    expected = 0.5 * (1 / np.sqrt(2) + 1 / np.sqrt(2))  # both ways: the one class matches each at 45 degrees
    assert ref.similarities(mixed)[0] == pytest.approx(expected, abs=1e-6)


def test_similarities_equal_the_pairwise_definition():
    centres, datasets = _tasks()
    ref = TaskReference(centres, datasets)
    query = np.random.default_rng(1).normal(size=(3, 8))
    expected = [task_similarity(unit_centres(query), unit_centres(c)) for c in centres]
    assert ref.similarities(query) == pytest.approx(expected, abs=1e-5)
    known = ref.familiarity(query)
    assert known.nearest == int(np.argmax(expected)) and known.similarity == pytest.approx(max(expected), abs=1e-5)


def test_threshold_is_the_closest_a_task_comes_to_a_task_of_other_datasets():
    centres, datasets = _tasks()
    ref = TaskReference(centres, datasets)
    units = [unit_centres(c) for c in centres]
    expected = max(task_similarity(units[i], units[j]) for i in range(len(units)) for j in range(len(units))
                   if not set(datasets[i]) & set(datasets[j]))
    assert ref.threshold == pytest.approx(expected, abs=1e-5)
    # Tasks 3 ("b", "c") and 4 ("c") share a dataset: their similarity must not count.
    twins = TaskReference([centres[0], centres[0], centres[2]], [["a"], ["b"], ["a", "b"]])
    assert twins.threshold == pytest.approx(1.0, abs=1e-5)  # tasks 0 and 1: same classes, other datasets


def test_novel_only_at_or_below_the_threshold():
    x, y, z = np.eye(4)[:3]
    ref = TaskReference([np.stack([x]), np.stack([y])], [["a"], ["b"]])  # threshold: cos(x, y) = 0
    assert ref.threshold == pytest.approx(0.0)
    assert not ref.familiarity(np.stack([x + 0.1 * z])).novel
    assert ref.familiarity(np.stack([z])).novel  # orthogonal to both: as far as the two datasets are apart
    # One dataset only: no task of another dataset to compare with, so nothing is called novel.
    single = TaskReference([np.stack([x]), np.stack([y])], [["a"], ["a"]])
    assert single.threshold == -math.inf and not single.familiarity(np.stack([-x])).novel
    assert single.familiarity(np.stack([x])).as_dict()["threshold"] is None  # JSON has no -inf


def test_subset_recomputes_the_threshold():
    centres, datasets = _tasks()
    ref = TaskReference(centres, datasets)
    sub = ref.subset([0, 2, 5])
    direct = TaskReference([centres[i] for i in (0, 2, 5)], [datasets[i] for i in (0, 2, 5)])
    assert sub.num_tasks == 3 and sub.threshold == pytest.approx(direct.threshold, abs=1e-6)
    q = np.ones((2, 8))
    assert sub.similarities(q) == pytest.approx(direct.similarities(q), abs=1e-6)


def test_checkpoint_form_round_trips_through_weights_only_load():
    centres, datasets = _tasks()
    ref = TaskReference(centres, datasets)
    buffer = io.BytesIO()
    torch.save({"reference": ref.to_dict()}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)["reference"]
    back = TaskReference.from_dict(stored)
    q = np.random.default_rng(3).normal(size=(4, 8))
    assert back.threshold == pytest.approx(ref.threshold) and back.familiarity(q) == ref.familiarity(q)
    # The stored threshold is read, not recomputed; without one it is computed.
    assert TaskReference.from_dict({**stored, "threshold": 0.25}).threshold == 0.25
    assert TaskReference.from_dict({k: v for k, v in stored.items() if k != "threshold"}).threshold \
        == pytest.approx(ref.threshold)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.pop("offsets"), "expected centres, offsets"),
        (lambda d: d.update(offsets=torch.tensor([0, 2, 1])), "inconsistent shapes"),
        (lambda d: d.update(membership=torch.ones(1, 1, dtype=torch.bool)), "inconsistent shapes"),
        (lambda d: d["centres"].__setitem__((0, 0), float("nan")), "non-finite"),
        (lambda d: d.update(threshold=float("nan")), "threshold below +inf"),
        (lambda d: d.update(threshold="high"), "expected centres, offsets"),
    ],
)
def test_bad_checkpoint_entry_is_one_line_naming_it(change, fragment):
    values = TaskReference(*_tasks()).to_dict()
    change(values)
    with pytest.raises(SpiderError) as err:
        TaskReference.from_dict(values, "checkpoint x.ckpt: entry 'reference'")
    assert "checkpoint x.ckpt: entry 'reference'" in str(err.value) and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_inputs():
    with pytest.raises(SpiderError, match="at least one task"):
        TaskReference([], [])
    with pytest.raises(SpiderError, match="different widths"):
        TaskReference([np.ones((2, 3)), np.ones((2, 4))], [["a"], ["b"]])
    ref = TaskReference([np.ones((2, 3))], [["a"]])
    with pytest.raises(SpiderError, match="width 3"):
        ref.familiarity(np.ones((2, 5)))
    with pytest.raises(SpiderError, match="non-finite"):
        ref.familiarity(np.array([[np.inf, 0.0, 0.0]]))
