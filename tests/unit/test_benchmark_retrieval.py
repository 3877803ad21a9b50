"""``spider.benchmark.retrieval``: bank retrieval averages the bank accuracies of the bank tasks
whose class centres best match the target's."""

from __future__ import annotations

import types

import numpy as np
import pytest

from spider.benchmark import retrieval


class _Entry:
    def __init__(self, features, labels):
        self._f, self._l = np.asarray(features, dtype=np.float32), np.asarray(labels)

    def features(self):
        return self._f

    def labels(self):
        return self._l


class _Spec:
    def __init__(self, labels, dataset="pool"):
        self._l = np.asarray(labels)
        self.num_classes = int(self._l.max()) + 1
        self.classes = tuple((dataset, c) for c in range(self.num_classes))

    def labels(self):
        return self._l


def test_bank_retrieval_averages_the_nearest_bank_tasks(monkeypatch):
    import spider.datamodules.episodes as episodes
    import spider.datamodules.finetune_bank as finetune_bank

    # Two classes in 2-d. Bank task 0: classes along x and y (like the target); task 1: along -x
    # and -y; task 2: along x and -y (half a match).
    axes = {0: [[1, 0], [0, 1]], 1: [[-1, 0], [0, -1]], 2: [[1, 0], [0, -1]]}
    specs = [_Spec([0, 0, 1, 1]) for _ in axes]
    features = {id(s): np.repeat(np.array(axes[i], dtype=np.float32), 2, axis=0) for i, s in enumerate(specs)}
    accuracy = np.array([[90.0, 10.0], [10.0, 90.0], [60.0, 40.0]])
    monkeypatch.setattr(finetune_bank, "open_bank", lambda root, models: types.SimpleNamespace(
        specs=specs, accuracy=accuracy))
    monkeypatch.setattr(episodes, "task_array", lambda store, general, spec: features[id(spec)])
    target = _Entry([[2, 0], [3, 0], [0, 5], [0, 4]], [7, 7, 9, 9])
    store = types.SimpleNamespace(entry=lambda model, dataset: target)
    zoo = types.SimpleNamespace(root=None, models=["a", "b"], store=store, general="general", targets=["t"])
    preds, seconds = retrieval.bank_retrieval(zoo, (1, 2, 3))
    assert preds[1].tolist() == [[90.0, 10.0]]  # task 0 is the exact match
    assert preds[2].tolist() == [[75.0, 25.0]]  # then task 2
    assert preds[3] == pytest.approx(accuracy.mean(0)[None])
    assert seconds.shape == (1,) and seconds[0] >= 0
    assert retrieval.bank_retrieval(zoo, (1,), limit=1)[0][1].tolist() == [[90.0, 10.0]]


def test_target_familiarity_against_the_bank(monkeypatch):
    """A target like a bank task is familiar; one unlike every bank task, below the closest any bank
    task comes to a bank task of another pool dataset, is novel."""
    import spider.datamodules.episodes as episodes
    import spider.datamodules.finetune_bank as finetune_bank

    # Bank: dataset "a" along x/y, dataset "b" along z/w; the two are orthogonal (threshold 0).
    axes = {0: ("a", [[1, 0, 0, 0], [0, 1, 0, 0]]), 1: ("b", [[0, 0, 1, 0], [0, 0, 0, 1]])}
    specs = [_Spec([0, 0, 1, 1], d) for d, _ in axes.values()]
    features = {id(s): np.repeat(np.array(axes[i][1], dtype=np.float32), 2, axis=0) for i, s in enumerate(specs)}
    monkeypatch.setattr(finetune_bank, "open_bank", lambda root, models: types.SimpleNamespace(
        specs=specs, accuracy=np.zeros((2, 2))))
    monkeypatch.setattr(episodes, "task_array", lambda store, general, spec: features[id(spec)])
    entries = {"near": _Entry([[3, 0, 0, 0], [0, 2, 0, 0]], [0, 1]),
               "far": _Entry([[-1, 0, 0, 0], [0, 0, -1, 0]], [0, 1])}
    store = types.SimpleNamespace(entry=lambda model, dataset: entries[dataset])
    zoo = types.SimpleNamespace(root=None, models=["m0", "m1"], store=store, general="general",
                                targets=["near", "far"])
    familiar = retrieval.target_familiarity(zoo)
    assert familiar["near"].similarity == pytest.approx(1.0) and not familiar["near"].novel
    assert familiar["near"].nearest == 0 and familiar["near"].threshold == pytest.approx(0.0)
    assert familiar["far"].novel and familiar["far"].similarity <= 0.0
    note = retrieval.familiarity_note({t: f.as_dict() for t, f in familiar.items()})
    assert "novel at or below 0.000" in note and note.endswith("Novel: far.")
