"""The label cache: build, read, resume after interruption, refuse other settings, the CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.datamodules_support import FAST_BASELINES, TINY_TASKS, tiny_zoo

import spider.io
import spider.pipeline.labelling as labels_mod
from spider.aggregate import copeland
from spider.datamodules.label_cache import LabelCacheError, open_label_cache, resolve_label_config
from spider.datamodules.tasks import TaskSampler
from spider.pipeline.labelling import build_label_cache, target_baseline_scores
from spider.errors import ConfigError
from spider.labels import main as labels_main
from spider.store import FeatureStore

NUM_TASKS, SHARD = 20, 8  # shards of 8, 8 and 4 tasks


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory.mktemp("zoo"))


def _config(zoo, **kwargs):
    options = dict(targets=zoo.target_datasets, task=TINY_TASKS, baselines=FAST_BASELINES, shard_size=SHARD)
    return resolve_label_config(zoo.store_root, **{**options, **kwargs})


@pytest.fixture(scope="module")
def reference(zoo, tmp_path_factory):
    """An uninterrupted build, the yardstick of every resumed one."""
    out = tmp_path_factory.mktemp("reference")
    report = build_label_cache(_config(zoo), out, NUM_TASKS, progress=False)
    assert (report.computed, report.reused) == (NUM_TASKS, 0)
    return open_label_cache(out, NUM_TASKS, _config(zoo))


def _assert_identical(cache, reference):
    assert cache.specs == reference.specs
    for name in ("raw", "scores", "ranking"):
        a, b = getattr(cache, name), getattr(reference, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), name


def test_cache_holds_sampled_tasks_raw_scores_and_their_copeland_aggregate(zoo, reference):
    config = _config(zoo)
    assert config.models == tuple(zoo.models) and config.pool == tuple(zoo.pool_datasets)
    sampler = TaskSampler.from_store(FeatureStore(zoo.store_root), "general", config.pool, config=TINY_TASKS,
                                     num_tasks=NUM_TASKS, seed=0)
    assert reference.specs == sampler.tasks(0)
    assert reference.raw.shape == (NUM_TASKS, len(FAST_BASELINES), len(zoo.models))
    assert np.isfinite(reference.raw).all() and reference.mask.all()
    agg = copeland(reference.raw)
    np.testing.assert_array_equal(reference.scores, agg.scores)
    np.testing.assert_array_equal(reference.ranking, agg.ranking)
    assert reference.models == list(zoo.models) and reference.baselines == list(FAST_BASELINES)
    # spot-check one cell against a direct baseline call on the task's stored features
    from spider.baselines import get_baseline
    from spider.datamodules.label_cache import task_array

    store, spec = FeatureStore(zoo.store_root), reference.specs[3]
    x, logits = task_array(store, zoo.models[1], spec), task_array(store, zoo.models[1], spec, "logits")
    value = get_baseline("leep")(features=x, labels=spec.labels(), source_logits=logits)
    assert reference.raw[3, 0, 1] == pytest.approx(value, rel=1e-12)


def test_interrupted_build_resumes_to_identical_result(zoo, reference, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    calls = {"n": 0}
    real = labels_mod.score_task

    def dies_on_task_11(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt  # the build is "killed" while labelling shard 1
        return real(*args, **kwargs)

    monkeypatch.setattr(labels_mod, "score_task", dies_on_task_11)
    with pytest.raises(KeyboardInterrupt):
        build_label_cache(_config(zoo), out, NUM_TASKS, progress=False)
    monkeypatch.setattr(labels_mod, "score_task", real)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.npz"]
    with pytest.raises(LabelCacheError, match="incomplete"):
        open_label_cache(out, NUM_TASKS)
    # what a kill during a write leaves behind: a half-written temp file of a dead process
    (out / f".shard-00001.npz.tmp-{spider.io._HOST}-999999999").write_bytes(b"PK\x03\x04 truncated")
    (out / ".shard-00002.npz.tmp-otherhost-1").write_bytes(b"another machine's builder may be writing")
    report = build_label_cache(_config(zoo), out, NUM_TASKS, progress=False)
    assert (report.computed, report.reused) == (NUM_TASKS - SHARD, SHARD)
    assert [p.name for p in out.glob(".*tmp*")] == [".shard-00002.npz.tmp-otherhost-1"]
    _assert_identical(open_label_cache(out, NUM_TASKS, _config(zoo)), reference)


def test_garbled_or_missing_shards_are_rebuilt(zoo, reference, tmp_path):
    out = tmp_path / "cache"
    build_label_cache(_config(zoo), out, NUM_TASKS, progress=False)
    (out / "shard-00001.npz").write_bytes(b"garbage")
    (out / "shard-00002.npz").unlink()
    with pytest.warns(UserWarning, match="unreadable label shard"):
        report = build_label_cache(_config(zoo), out, NUM_TASKS, progress=False)
    assert (report.computed, report.reused) == (NUM_TASKS - SHARD, SHARD)
    _assert_identical(open_label_cache(out, NUM_TASKS), reference)


def test_growing_the_bank_reuses_complete_shards_and_reads_prefixes(zoo, reference, tmp_path):
    out = tmp_path / "cache"
    build_label_cache(_config(zoo), out, 10, progress=False)  # shards of 8 and 2 tasks
    report = build_label_cache(_config(zoo), out, NUM_TASKS, progress=False)
    assert (report.computed, report.reused) == (NUM_TASKS - SHARD, SHARD)
    _assert_identical(open_label_cache(out, NUM_TASKS), reference)
    prefix = open_label_cache(out, 5)
    assert prefix.specs == reference.specs[:5] and prefix.raw.tobytes() == reference.raw[:5].tobytes()
    assert build_label_cache(_config(zoo), out, 12, progress=False).computed == 0


def test_other_settings_are_refused_naming_the_difference(zoo, tmp_path):
    out = tmp_path / "cache"
    build_label_cache(_config(zoo), out, 4, progress=False)
    with pytest.raises(LabelCacheError, match=r"other settings \(seed: 0 -> 1\)") as err:
        build_label_cache(_config(zoo, seed=1), out, 4, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(LabelCacheError, match="baselines"):
        open_label_cache(out, 4, _config(zoo, baselines=("nce",)))
    # the same settings over a store whose features changed
    copy = tmp_path / "store"
    shutil.copytree(zoo.store_root, copy)
    store = FeatureStore(copy)
    entry = store.entry(zoo.models[0], zoo.pool_datasets[0])
    store.write(zoo.models[0], zoo.pool_datasets[0], "train", features=entry.features() + 1, labels=entry.labels(),
                logits=entry.logits(), overwrite=True)
    changed = resolve_label_config(copy, targets=zoo.target_datasets, task=TINY_TASKS, baselines=FAST_BASELINES,
                                   shard_size=SHARD)
    with pytest.raises(LabelCacheError, match=f"store entries {zoo.models[0]}/{zoo.pool_datasets[0]}/train"):
        build_label_cache(changed, out, 4, progress=False)


def test_resolve_rejects_targets_in_the_pool_and_unknown_names(zoo):
    with pytest.raises(ConfigError, match=f"'{zoo.target_datasets[0]}' also a target"):
        _config(zoo, pool=[zoo.pool_datasets[0], zoo.target_datasets[0]])
    with pytest.raises(ConfigError, match="general"):
        _config(zoo, general_encoder="nope")
    with pytest.raises(Exception, match="unknown baseline 'nope'"):
        _config(zoo, baselines=("nope",))


def test_target_scores_are_cached(zoo, tmp_path, monkeypatch):
    tasks = [(d, None) for d in zoo.target_datasets]
    raw, agg = target_baseline_scores(zoo.store_root, tmp_path, tasks, zoo.models, FAST_BASELINES)
    assert raw.shape == (2, 2, len(zoo.models)) and np.isfinite(raw).all()
    np.testing.assert_array_equal(agg, copeland(raw).scores)
    monkeypatch.setattr(labels_mod, "score_task", lambda *a, **k: pytest.fail("recomputed a cached target"))
    again, _ = target_baseline_scores(zoo.store_root, tmp_path, tasks, zoo.models, FAST_BASELINES)
    assert again.tobytes() == raw.tobytes()


def test_cli_builds_reports_and_rejects_bad_input(zoo, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["build", "--store", str(zoo.store_root), "--out", str(out), "--num-tasks", "6", "--shard-size", "4",
            "--baselines", *FAST_BASELINES, "--targets", *zoo.target_datasets, "--datasets-per-task", "2", "3",
            "--classes-per-task", "2", "8", "--samples-per-class", "2", "6", "--no-progress", "--device", "cpu"]
    assert labels_main(args) == 0
    assert "computed 6, reused 0" in capsys.readouterr().out
    assert open_label_cache(out, 6, _config(zoo, shard_size=4)).num_tasks == 6
    assert labels_main(["info", str(out)]) == 0
    assert "tasks: 6" in capsys.readouterr().out
    bad = args + ["--pool", zoo.pool_datasets[0], zoo.target_datasets[0]]
    assert labels_main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pool_datasets:") and err.count("\n") == 1
    assert labels_main(["info", str(tmp_path / "nothing")]) == 2


def _cli(zoo, out: Path, num_tasks: int, shard: int) -> list[str]:
    return [sys.executable, "-m", "spider.labels", "build", "--store", str(zoo.store_root), "--out", str(out),
            "--num-tasks", str(num_tasks), "--shard-size", str(shard), "--baselines", *FAST_BASELINES,
            "--targets", *zoo.target_datasets, "--datasets-per-task", "2", "3", "--classes-per-task", "2", "8",
            "--samples-per-class", "2", "6", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_cli_build_resumes_to_the_uninterrupted_result(zoo, tmp_path, workers):
    num_tasks, shard = 160, 8
    config = _config(zoo, shard_size=shard)
    reference_dir = tmp_path / "reference"
    build_label_cache(config, reference_dir, num_tasks, progress=False)
    reference = open_label_cache(reference_dir, num_tasks, config)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(zoo, out, num_tasks, shard) + ["--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "shard-00000.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its worker processes
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    done = len(list(out.glob("shard-*.npz")))
    assert 1 <= done < num_tasks // shard
    resumed = subprocess.run(_cli(zoo, out, num_tasks, shard) + ["--workers", str(workers)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"reused {done * shard}" in resumed.stdout
    _assert_identical(open_label_cache(out, num_tasks, config), reference)


def _one_entry_store(root, features, labels):
    store = FeatureStore(root)
    store.write("general", "pool", "train", features=features, labels=labels)
    store.write("ptm", "pool", "train", features=np.ones((len(labels), 2), np.float32), labels=labels)
    return store


def test_label_identity_covers_the_general_encoders_labels_not_its_features(tmp_path):
    from spider.datamodules.label_cache import store_fingerprint

    labels = np.array([0, 0, 1, 1])
    rng = np.random.default_rng(0)
    base = _one_entry_store(tmp_path / "a", rng.normal(size=(4, 3)).astype(np.float32), labels)
    other_features = _one_entry_store(tmp_path / "b", rng.normal(size=(4, 3)).astype(np.float32), labels)
    other_labels = _one_entry_store(tmp_path / "c", rng.normal(size=(4, 3)).astype(np.float32), labels[::-1].copy())

    def fingerprint(store):
        return store_fingerprint(store, ["general", "ptm"], ["pool"], "train", labels_of=["general"])

    assert fingerprint(base) == fingerprint(other_features)
    assert fingerprint(base)["general/pool/train"] != fingerprint(other_labels)["general/pool/train"]
    # without labels_of the features count (the PTMs' entries keep doing so)
    assert store_fingerprint(base, ["general"], ["pool"], "train") != \
        store_fingerprint(other_features, ["general"], ["pool"], "train")
