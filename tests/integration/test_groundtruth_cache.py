"""Fine-tuning ground truth: per-run JSON cache, resume after a kill, lr selection, CSV output."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import spider.pipeline.finetune as gt
from spider.datamodules.ground_truth_csv import read_ground_truth
from spider.pipeline.extract import PreparedModel
from spider.pipeline.finetune import (
    FinetuneConfig,
    GroundTruthJob,
    RunCache,
    RunResult,
    run_ground_truth,
    run_hash,
    summarize,
    write_tables,
)

CONFIG = FinetuneConfig(lrs=(3e-3, 1e-3), seeds=(0, 1), epochs=2, batch_size=8)


@dataclasses.dataclass(frozen=True)
class Views:
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def _views(seed: int, classes: int = 3) -> dict[str, Views]:
    """Grey 8x8 images: class c lights row 2c (plus noise), so fine-tuning can learn them."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, per_class in (("train", 8), ("val", 4), ("test", 4)):
        labels = np.repeat(np.arange(classes), per_class)
        images = rng.integers(0, 60, size=(len(labels), 8, 8)).astype(np.uint8)
        images[np.arange(len(labels)), 2 * labels] = 220
        out[part] = Views(images, labels, tuple(f"c{i}" for i in range(classes)))
    return out


class TinyNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 5)

    def features_and_logits(self, x):
        f = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return f, self.fc(f)


@dataclasses.dataclass(frozen=True)
class TinyRef:
    """Stands in for a ModelRef: a deterministic small CNN with native 8x8 grey input."""

    id: str
    width: int = 6

    def load(self, data_dir=None) -> PreparedModel:
        torch.manual_seed(self.width)
        net = TinyNet(self.width).eval()
        return PreparedModel(self.id, net, net.features_and_logits, 1, (8, 8), (0.5,), (0.5,))

    def to_dict(self):
        return dataclasses.asdict(self)


def _jobs():
    return [GroundTruthJob("toy", _views(0), TinyRef("net_a", 6), identity={"v": 1}),
            GroundTruthJob("toy", _views(0), TinyRef("net_b", 10), identity={"v": 1})]


def _key(r: RunResult):
    return (r.target, r.model, r.lr, r.seed, r.val_accuracy, r.test_accuracy, r.train_loss, r.test_nll)


def _count_finetunes(monkeypatch) -> list:
    calls = []
    real = gt.finetune

    def counting(*args, **kwargs):
        calls.append(kwargs["lr"])
        return real(*args, **kwargs)

    monkeypatch.setattr(gt, "finetune", counting)
    return calls


def test_every_run_is_cached_as_json(tmp_path):
    results = run_ground_truth(_jobs(), CONFIG, tmp_path, progress=False)
    assert len(results) == 2 * 2 * 2
    assert [(r.model, r.lr, r.seed) for r in results[:4]] == [
        ("net_a", 3e-3, 0), ("net_a", 3e-3, 1), ("net_a", 1e-3, 0), ("net_a", 1e-3, 1)]
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 8
    data = json.loads(RunCache(tmp_path).path("toy", "net_a", 1e-3, 1).read_text())
    assert data["hash"] == run_hash(_jobs()[0], CONFIG)
    assert 0.0 <= data["test_accuracy"] <= 100.0
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temp files


def test_runs_record_the_test_cross_entropy_and_older_files_still_load(tmp_path, monkeypatch):
    results = run_ground_truth(_jobs()[:1], CONFIG, tmp_path, progress=False)
    assert all(np.isfinite(r.test_nll) and r.test_nll > 0 for r in results)
    # A run cached before test_nll was recorded is still the same run: read back, NaN for the new field.
    path = RunCache(tmp_path).path("toy", "net_a", 3e-3, 0)
    data = json.loads(path.read_text())
    del data["test_nll"]
    path.write_text(json.dumps(data))
    calls = _count_finetunes(monkeypatch)
    again = run_ground_truth(_jobs()[:1], CONFIG, tmp_path, progress=False)
    assert calls == [] and np.isnan(again[0].test_nll) and again[0].cached
    assert [_key(r)[:-1] for r in again] == [_key(r)[:-1] for r in results]
    del data["train_loss"]  # a field without a default is still required
    path.write_text(json.dumps(data))
    assert RunCache(tmp_path).get("toy", "net_a", 3e-3, 0, run_hash(_jobs()[0], CONFIG)) is None


def test_finished_runs_are_not_recomputed(tmp_path, monkeypatch):
    first = run_ground_truth(_jobs(), CONFIG, tmp_path, progress=False)
    calls = _count_finetunes(monkeypatch)
    again = run_ground_truth(_jobs(), CONFIG, tmp_path, progress=False)
    assert calls == []
    assert all(r.cached for r in again)
    assert [_key(r) for r in again] == [_key(r) for r in first]


def test_resume_after_kill_gives_identical_results(tmp_path, monkeypatch):
    reference = run_ground_truth(_jobs(), CONFIG, tmp_path / "uninterrupted", progress=False)
    calls = []
    real = gt.finetune

    def dies_on_third_run(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the build is killed during its third run
        calls.append(kwargs["lr"])
        return real(*args, **kwargs)

    monkeypatch.setattr(gt, "finetune", dies_on_third_run)
    with pytest.raises(KeyboardInterrupt):
        run_ground_truth(_jobs(), CONFIG, tmp_path / "killed", progress=False)
    assert len(list((tmp_path / "killed").rglob("*.json"))) == 2

    monkeypatch.setattr(gt, "finetune", real)
    calls = _count_finetunes(monkeypatch)
    resumed = run_ground_truth(_jobs(), CONFIG, tmp_path / "killed", progress=False)
    assert len(calls) == 6  # only the runs that had not finished
    assert sum(r.cached for r in resumed) == 2
    assert [_key(r) for r in resumed] == [_key(r) for r in reference]


def test_changed_settings_or_corrupt_file_recompute(tmp_path, monkeypatch):
    run_ground_truth(_jobs(), CONFIG, tmp_path, progress=False)
    RunCache(tmp_path).path("toy", "net_b", 3e-3, 0).write_text("{truncated")
    calls = _count_finetunes(monkeypatch)
    run_ground_truth(_jobs(), CONFIG, tmp_path, progress=False)
    assert calls == [3e-3]
    calls.clear()
    run_ground_truth(_jobs(), dataclasses.replace(CONFIG, epochs=1), tmp_path, progress=False)
    assert len(calls) == 8


def test_moving_a_checkpoint_keeps_the_cache_valid():
    job = _jobs()[0]

    @dataclasses.dataclass(frozen=True)
    class WithCheckpoint(TinyRef):
        checkpoint: str = "a/model.pth"

    moved = dataclasses.replace(job, model=WithCheckpoint("net_a", 6, "b/model.pth"))
    here = dataclasses.replace(job, model=WithCheckpoint("net_a", 6, "a/model.pth"))
    assert run_hash(moved, CONFIG) == run_hash(here, CONFIG)
    assert run_hash(here, CONFIG) != run_hash(dataclasses.replace(here, identity={"v": 2}), CONFIG)


def test_a_run_is_shared_by_protocols_with_other_lrs_or_seeds():
    job = _jobs()[0]
    wider = dataclasses.replace(CONFIG, lrs=CONFIG.lrs + (0.5,), seeds=CONFIG.seeds + (7,))
    assert run_hash(job, wider) == run_hash(job, CONFIG)
    assert run_hash(job, dataclasses.replace(CONFIG, batch_size=CONFIG.batch_size + 1)) != run_hash(job, CONFIG)


def test_fine_tuning_learns_and_changes_only_a_copy(tmp_path):
    results = run_ground_truth(_jobs()[:1], dataclasses.replace(CONFIG, epochs=6), tmp_path, progress=False)
    assert max(r.test_accuracy for r in results) > 50.0  # chance is 33%


def _result(model, lr, seed, val, test):
    return RunResult("t", model, lr, seed, val, test, 0.0, 0.0, 1.0)


def test_summary_selects_lr_by_mean_validation_accuracy():
    config = FinetuneConfig(lrs=(1e-2, 1e-3), seeds=(0, 1))
    results = [_result("m", 1e-2, 0, 90, 70), _result("m", 1e-2, 1, 50, 72),  # val mean 70
               _result("m", 1e-3, 0, 75, 60), _result("m", 1e-3, 1, 75, 64),  # val mean 75
               _result("n", 1e-2, 0, 80, 81), _result("n", 1e-3, 0, 80, 99)]  # tie -> first lr
    table = summarize(results, config)
    assert table[("t", "m")].best_lr == 1e-3
    assert table[("t", "m")].accuracy == pytest.approx(62.0)
    assert table[("t", "m")].accuracy_std == pytest.approx(2.0)
    assert table[("t", "m")].val_accuracy == pytest.approx(75.0)
    assert table[("t", "n")].best_lr == 1e-2 and table[("t", "n")].accuracy == 81


def test_tables_are_readable_and_rewritten_only_on_change(tmp_path):
    config = FinetuneConfig(lrs=(1e-3,), seeds=(0,))
    table = summarize([_result("m", 1e-3, 0, 50, 61.25), _result("n", 1e-3, 0, 50, 40.5)], config)
    csv_path, details = tmp_path / "gt.csv", tmp_path / "details.csv"
    assert write_tables(table, ["t"], ["m", "n", "absent"], csv_path, details, {"t": ["n"]})
    truth = read_ground_truth(csv_path)
    assert truth.datasets == ["t"] and truth.models == ["m", "n"]
    np.testing.assert_allclose(truth.accuracy, [[61.25, 40.5]])
    rows = details.read_text().splitlines()
    assert rows[0].startswith("dataset,model,accuracy,accuracy_std,best_lr")
    assert rows[2].endswith(",1")  # n is in-domain for t
    stamp = (csv_path.stat().st_mtime_ns, details.stat().st_mtime_ns)
    assert not write_tables(table, ["t"], ["m", "n", "absent"], csv_path, details, {"t": ["n"]})
    assert (csv_path.stat().st_mtime_ns, details.stat().st_mtime_ns) == stamp
