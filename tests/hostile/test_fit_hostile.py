"""Hostile inputs to ``spider fit``: invalid numbers, non-finite data, NaN losses, a run directory
used twice at once, and resumes that do not match the run (issue 7, items 1, 5 and 6)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import spider.store as store_mod
import spider.store_checks as store_checks
from spider.config import RESUMABLE_KEYS, compose
from spider.errors import ConfigError, SpiderError, StoreError
from spider.fit import fit, main
from spider.run_inputs import check_inputs
from spider.run_lock import LOCK_NAME, RunDirLocked, run_dir_lock

REPO = Path(__file__).resolve().parents[2]
BASELINES = "data.baselines=[leep,nce]"  # cheapest: the fit machinery is under test


def _overrides(cache_dir, run_dir, *extra):
    return ["data=tiny", "logger=none", f"data.cache_dir={cache_dir}", f"run_dir={run_dir}", BASELINES,
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.max_epochs=1",
            "results_table=false", *extra]


def _one_line_exit_2(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile-fit-cache")


@pytest.fixture(scope="module")
def trained(cache_dir, tmp_path_factory):
    """A tiny run trained for one epoch (copy it before changing it)."""
    run_dir = tmp_path_factory.mktemp("hostile-run") / "run"
    fit(compose(_overrides(cache_dir, run_dir)))
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out, symlinks=True)
    return out


@pytest.fixture(scope="module")
def zoo(trained, cache_dir):
    """The generated tiny zoo: (folder, store root, ground truth)."""
    (zoo_dir,) = Path(cache_dir).glob("synthetic-*")
    return zoo_dir


# ------------------------------------------------------------------------------- config numbers


@pytest.mark.parametrize("override, key, expected", [
    ("model.lr=inf", "model.lr", "finite float > 0"),
    ("model.lr=nan", "model.lr", "finite float > 0"),
    ("model.lr=0", "model.lr", "finite float > 0"),
    ("model.lr=-1e-3", "model.lr", "finite float > 0"),
    ("model.weight_decay=-1", "model.weight_decay", "finite float >= 0"),
    ("model.weight_decay=nan", "model.weight_decay", "finite float >= 0"),
    ("model.dropout=1.0", "model.dropout", "[0, 1)"),
    ("model.attn_dropout=nan", "model.attn_dropout", "[0, 1)"),
    ("model.mlp_ratio=inf", "model.mlp_ratio", "finite float > 0"),
    ("model.dim=30", "model.dim", "multiple of model.heads=4"),
    ("trainer.max_epochs=0", "trainer.max_epochs", "positive int"),
    ("trainer.devices=0", "trainer.devices", "int >= 1"),
    ("trainer.devices=-3", "trainer.devices", "int >= 1"),
    ("trainer.precision=8", "trainer.precision", "32-true"),
    ("trainer.gradient_clip_val=inf", "trainer.gradient_clip_val", "finite float >= 0"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps", "int >= 1"),
    ("data.synthetic.gt_noise=nan", "data.synthetic.gt_noise", "finite float >= 0"),
])
def test_invalid_numbers_are_one_line_config_errors(tmp_path, capsys, override, key, expected):
    line = _one_line_exit_2(capsys, ["data=tiny", "logger=none", f"run_dir={tmp_path / 'r'}", override])
    assert f"config key {key!r}" in line and expected in line
    assert not (tmp_path / "r").exists()  # refused before anything is written


@pytest.mark.parametrize("override", ["trainer.devices=auto", "trainer.devices=-1", "trainer.precision=16",
                                      "trainer.precision=bf16-mixed", "model.dropout=0", "model.weight_decay=0"])
def test_valid_edge_numbers_are_accepted(override):
    compose(["data=tiny", "logger=none", override])


# ------------------------------------------------------------------------------ non-finite data


def _poison(zoo_dir: Path, out: Path, model: str, dataset: str, array: str, value: float) -> Path:
    """A copy of the zoo whose ``model/dataset/train`` ``array`` holds ``value`` in 5 cells, with
    the manifest's sha256 updated (as a careless tool would write it): only a value scan sees it."""
    shutil.copytree(zoo_dir, out, symlinks=True)
    entry = out / "store" / model / dataset / "train"
    path = entry / f"{array}.npy"
    data = np.load(path, mmap_mode="r+")
    data[:5, 0] = value
    data.flush()
    del data
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["arrays"][array]["sha256"] = store_checks._sha256(path)
    (entry / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("model, dataset, array, value", [
    ("general", "pool1", "features", np.nan),
    ("ptm02", "pool0", "features", np.inf),
    ("ptm01", "target0", "features", -np.inf),
    ("ptm00", "pool1", "logits", np.nan),
])
def test_non_finite_store_values_stop_fit_before_training(zoo, tmp_path, capsys, model, dataset, array, value):
    bad = _poison(zoo, tmp_path / "zoo", model, dataset, array, value)
    run_dir = tmp_path / "run"
    line = _one_line_exit_2(capsys, _overrides(tmp_path / "cache", run_dir, "data.synthetic=null",
                                               f"data.store={tmp_path / 'zoo' / 'store'}",
                                               f"data.ground_truth={tmp_path / 'zoo' / 'ground_truth.csv'}"))
    assert str(bad) in line and "non-finite" in line
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert not (run_dir / LOCK_NAME).exists()


def test_store_value_scan_is_cached_per_file(zoo, monkeypatch):
    """The scan runs once per file and process, like the checksum: reading an entry again is free."""
    scanned = []
    real = store_checks._check_values
    monkeypatch.setattr(store_checks, "_check_values", lambda *a: scanned.append(a[1]) or real(*a))
    monkeypatch.setattr(store_checks, "_VALUES_OK", set())
    store = store_mod.FeatureStore(zoo / "store")
    for _ in range(3):
        store.entry("ptm00", "pool0")
    assert sorted(scanned) == ["features", "labels", "logits"]


def _datamodule(zoo: Path, scores: np.ndarray):
    labels = SimpleNamespace(scores=scores, source="copeland")
    config = SimpleNamespace(general_encoder="general", models=("ptm00", "ptm01"), pool=("pool0",))
    return SimpleNamespace(store_root=str(zoo / "store"), label_config=config, split="train", target_split="train",
                           target_names=["target0"], training_labels=labels, label_cache_dir=Path("/cache/labels-x"),
                           finetune_bank=None, model_names=["ptm00", "ptm01"])


def test_infinite_training_label_is_refused_naming_the_cache_and_task(zoo):
    scores = np.array([[1.0, 2.0], [np.nan, 3.0], [1.0, np.inf]])
    with pytest.raises(SpiderError) as err:
        check_inputs(_datamodule(zoo, scores))
    message = str(err.value)
    assert "/cache/labels-x" in message and "task 2, model 'ptm01'" in message and "\n" not in message


def test_training_labels_without_any_finite_value_are_refused(zoo):
    with pytest.raises(SpiderError, match="no task has a finite label"):
        check_inputs(_datamodule(zoo, np.full((3, 2), np.nan)))


def test_nan_labels_mean_unlabelled_and_pass(zoo):
    check_inputs(_datamodule(zoo, np.array([[1.0, np.nan], [0.5, 2.0]])))


@pytest.mark.parametrize("accuracy", ["nan", "inf", "-inf"])
def test_non_finite_ground_truth_is_one_line(zoo, tmp_path, capsys, accuracy):
    shutil.copytree(zoo, tmp_path / "zoo", symlinks=True)
    truth = tmp_path / "zoo" / "ground_truth.csv"
    lines = truth.read_text().splitlines()
    dataset, model, *_ = lines[1].split(",")
    lines[1] = f"{dataset},{model},{accuracy}"
    truth.write_text("\n".join(lines) + "\n")
    line = _one_line_exit_2(capsys, _overrides(tmp_path / "cache", tmp_path / "run", "data.synthetic=null",
                                               f"data.store={tmp_path / 'zoo' / 'store'}", f"data.ground_truth={truth}"))
    assert f"{truth}:2" in line and "not finite" in line


def test_nan_training_loss_stops_before_the_weights_change(cache_dir, tmp_path, monkeypatch):
    """A loss that turns NaN (e.g. an overflow) stops training with one line naming the step;
    no checkpoint of the NaN model is written."""
    import spider.modules.token_scorer as token_scorer

    real = token_scorer.TokenScorer.training_step
    calls = []

    def poisoned(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        calls.append(batch_idx)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(token_scorer.TokenScorer, "training_step", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(SpiderError) as err:
        fit(compose(_overrides(cache_dir, run_dir)))
    message = str(err.value)
    assert message.startswith("training loss is nan at epoch 0, step 1") and "\n" not in message
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    assert not (run_dir / LOCK_NAME).exists()  # released on the error


def test_metrics_list_non_finite_values_explicitly(cache_dir, run_copy):
    """A resume with no epoch left trains nothing: its throughput is NaN, written as null and
    named under "non_finite" (never a silent NaN)."""
    result = fit(compose(_overrides(cache_dir, run_copy, "resume=true")))
    assert "episodes_per_second" in result["non_finite"]
    saved = json.loads((run_copy / "metrics.json").read_text())
    assert saved["episodes_per_second"] is None and "episodes_per_second" in saved["non_finite"]
    assert all(np.isfinite(v) for v in saved["val"].values())


# ------------------------------------------------------------------------------- run-dir lock

HOLD = textwrap.dedent("""
    import sys, time
    from spider.run_lock import run_dir_lock
    with run_dir_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def test_a_live_holder_refuses_a_second_fit_naming_its_pid(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _one_line_exit_2(capsys, ["data=tiny", "logger=none", f"run_dir={run_dir}"])
        assert f"pid {holder.pid}" in line and "in use" in line and str(run_dir) in line
        assert not (run_dir / "cache").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # Killed: the kernel dropped its flock; its lock file (with the dead pid) is taken over.
    assert (run_dir / LOCK_NAME).read_text().strip() == str(holder.pid)
    with run_dir_lock(run_dir):
        assert (run_dir / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (run_dir / LOCK_NAME).exists()


def test_stale_lock_file_of_a_dead_pid_is_taken_over_by_fit(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text("999999999\n")
    result = fit(compose(_overrides(cache_dir, run_dir)))
    assert Path(result["checkpoint"]).is_file() and not (run_dir / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_one_process_and_skipped_by_ddp_children(tmp_path, monkeypatch):
    with run_dir_lock(tmp_path / "a"):
        with run_dir_lock(tmp_path / "a"):  # fit() then train() in one process
            assert (tmp_path / "a" / LOCK_NAME).is_file()
        assert (tmp_path / "a" / LOCK_NAME).is_file()
    monkeypatch.setenv("LOCAL_RANK", "1")
    with run_dir_lock(tmp_path / "b"):  # rank 0 holds it for the whole job
        assert not (tmp_path / "b").exists()


def test_a_lock_held_in_this_process_by_another_fd_conflicts(tmp_path):
    """flock conflicts between two opens of the file, so the check does not depend on the pid."""
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RunDirLocked, match="pid 4242"):
            with run_dir_lock(run_dir):
                pass
    finally:
        os.close(fd)


@pytest.mark.slow
def test_two_concurrent_fits_on_one_run_dir(cache_dir, tmp_path):
    """Two `spider fit run_dir=R` at once: the second exits 2 naming the first's pid (even with
    overwrite=true, which would otherwise delete the first's checkpoints); once the first is
    killed, its lock is taken over."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "spider.fit", *_overrides(cache_dir, run_dir)]
    first = subprocess.Popen([*argv, "trainer.max_epochs=100000"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=_env())
    lock = run_dir / LOCK_NAME
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip()) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.1)
        second = subprocess.run([*argv, "overwrite=true"], capture_output=True, text=True, env=_env(), timeout=120)
        assert first.poll() is None  # still training: the refusal was the lock's
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0] and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait(timeout=60)
    assert lock.read_text().strip() == str(first.pid)  # left by the killed run: stale now
    third = subprocess.run([*argv, "overwrite=true"], capture_output=True, text=True, env=_env(), timeout=300)
    assert third.returncode == 0, third.stderr
    assert not lock.exists() and not list((run_dir / "checkpoints").glob("last-v*.ckpt"))


# -------------------------------------------------------------------------------------- resume


def test_resume_with_other_data_names_the_keys_and_keeps_the_run(cache_dir, run_copy, capsys):
    config = (run_copy / "config.yaml").read_text()
    line = _one_line_exit_2(capsys, _overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2",
                                               "data.synthetic.seed=5", "model.lr=3e-4"))
    assert "data.synthetic.seed (0 -> 5)" in line and "model.lr (0.001 -> 0.0003)" in line
    assert str(run_copy / "config.yaml") in line and "trainer.max_epochs" in line  # the allowed list
    assert (run_copy / "config.yaml").read_text() == config  # not overwritten


def test_resume_with_a_changed_model_dim_is_one_line(cache_dir, run_copy, capsys):
    line = _one_line_exit_2(capsys, _overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2",
                                               "model.dim=32"))
    assert "model.dim (64 -> 32)" in line


def test_resume_without_config_yaml_still_compares_weight_shapes(cache_dir, run_copy, capsys):
    (run_copy / "config.yaml").unlink()
    line = _one_line_exit_2(capsys, _overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2",
                                               "model.dim=32"))
    assert str(run_copy / "checkpoints" / "last.ckpt") in line and "shape" in line and "overwrite=true" in line


def test_resume_with_fewer_epochs_than_trained_is_one_line(cache_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    fit(compose(_overrides(cache_dir, run_dir, "trainer.max_epochs=2")))
    line = _one_line_exit_2(capsys, _overrides(cache_dir, run_dir, "resume=true", "trainer.max_epochs=1"))
    assert "'trainer.max_epochs'" in line and "already trained 2 epochs" in line


def test_resume_may_change_the_listed_keys(cache_dir, run_copy):
    assert "trainer.max_epochs" in RESUMABLE_KEYS and "logger" in RESUMABLE_KEYS
    result = fit(compose(_overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2", "logger=csv",
                                    "trainer.log_every_n_steps=1", "results_table=true")))
    assert result["epochs"] == 2
    assert "max_epochs: 2" in (run_copy / "config.yaml").read_text()


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint\n", None], ids=["empty", "text", "truncated"])
def test_unreadable_last_ckpt_on_resume_names_the_file_and_overwrite(cache_dir, run_copy, capsys, content):
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000] if content is None else content)
    line = _one_line_exit_2(capsys, _overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2"))
    assert f"cannot read the checkpoint {last}" in line and "overwrite=true" in line


def test_a_pickle_with_code_as_last_ckpt_is_refused_without_running_it(cache_dir, run_copy, capsys, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"epoch": 0, "state_dict": {}, "x": Evil()}, run_copy / "checkpoints" / "last.ckpt")
    line = _one_line_exit_2(capsys, _overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2"))
    assert "cannot read the checkpoint" in line and not marker.exists()


def test_overwrite_after_a_refused_resume_starts_again(cache_dir, run_copy):
    (run_copy / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError):
        fit(compose(_overrides(cache_dir, run_copy, "resume=true", "trainer.max_epochs=2")))
    result = fit(compose(_overrides(cache_dir, run_copy, "overwrite=true")))
    assert torch.load(result["checkpoint"], weights_only=True)["epoch"] == 0


def test_a_missing_store_entry_is_a_store_error_not_a_traceback(zoo, tmp_path, capsys):
    shutil.copytree(zoo, tmp_path / "zoo", symlinks=True)
    shutil.rmtree(tmp_path / "zoo" / "store" / "ptm01" / "pool1")
    line = _one_line_exit_2(capsys, _overrides(tmp_path / "cache", tmp_path / "run", "data.synthetic=null",
                                               f"data.store={tmp_path / 'zoo' / 'store'}",
                                               f"data.ground_truth={tmp_path / 'zoo' / 'ground_truth.csv'}"))
    assert "ptm01" in line and "pool1" in line
    assert issubclass(StoreError, SpiderError)


@pytest.mark.parametrize("hole", ["inf", "missing"])
def test_non_finite_or_missing_bank_accuracy_is_one_line(trained, cache_dir, tmp_path, hole):
    """The fine-tuning bank (data.label_source=finetune/mixed/selected) is read by open_bank,
    which refuses an infinite accuracy (its line) or a pair without one (the file)."""
    from spider.datamodules.label_cache import open_label_cache
    from spider.datamodules.finetune_bank import open_bank

    (labels,) = Path(cache_dir).glob("labels-*")
    specs = open_label_cache(labels).spec_texts[:2]
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "tasks.jsonl").write_text("".join(json.dumps({"task": f"task{i}", "spec": s}) + "\n"
                                              for i, s in enumerate(specs)))
    rows = ["dataset,model,accuracy", "task0,ptm00,50.0", "task1,ptm00,40.0", "task1,ptm01,45.0",
            "task0,ptm01,inf" if hole == "inf" else ""]
    (bank / "accuracy.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(SpiderError) as err:
        open_bank(bank, ["ptm00", "ptm01"])
    message = str(err.value)
    assert "\n" not in message and str(bank / "accuracy.csv") in message
    assert ("not finite" if hole == "inf" else "non-finite accuracy") in message
