"""``spider zoo build`` under torchrun: the files of a one-process build, and resume after a rank dies.

Two one-process builds already differ in a few files, which these tests leave out of the byte
comparison (:data:`NOT_DETERMINISTIC`): ``zoo.json`` (stage timings), each
``checkpoints/<ptm>/config.json`` (CPU and wall seconds), each store entry's ``manifest.json``
(write time, absolute checkpoint path) and each fine-tuning run's JSON (its CPU seconds, compared
without that field). Everything else - ``ground_truth.csv``, the label shards and manifest, the
bank, every feature array and checkpoint - must be byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.datamodules_support import FAST_BASELINES, TINY_TASKS, tiny_zoo

from spider.datamodules.label_cache import MANIFEST, resolve_label_config
from spider.pipeline.labelling import build_label_cache

TIMEOUT = 900  # seconds per build: the tiny build takes well under a minute on 2 idle cores

NOT_DETERMINISTIC = ("zoo.json", "checkpoints/*/config.json", "store/*/*/train/manifest.json",
                     "alternatives/*/store/*/*/train/manifest.json")
RUN_FILES = ("ground_truth/runs/*/*/*.json", "bank/runs/*/*/*.json")


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path, store entries read through their
    ``<split>`` link (version folders have random names) and hidden temp files left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if any(rel.match(p) for p in NOT_DETERMINISTIC):
            out[str(rel)] = "(not compared)"
        elif any(rel.match(p) for p in RUN_FILES):
            run = json.loads(path.read_text())
            run.pop("seconds")
            out[str(rel)] = json.dumps(run, sort_keys=True)
        else:
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _build(out: Path, ranks: int, **popen) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(launcher + ["-m", "spider.zoo", "build", "tiny", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **popen)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"build timed out after {TIMEOUT} s:\n{output[-3000:]}")
    return proc.returncode, output


def _built_table(output: str) -> dict[str, int]:
    """``{stage: built}`` from the report table the build prints."""
    rows = [line.split() for line in output.splitlines()]
    return {r[0]: int(r[1]) for r in rows
            if len(r) >= 3 and r[0] in ("pretrain", "extract", "groundtruth", "labels", "bank") and r[1].isdigit()}


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "tiny"
    code, output = _finish(_build(out, 1))
    assert code == 0, output[-3000:]
    return out, _built_table(output)


@pytest.mark.slow
@pytest.mark.shared_data
def test_two_torchrun_ranks_write_the_files_of_one_process(one_process, tmp_path):
    reference, built = one_process
    out = tmp_path / "tiny"
    code, output = _finish(_build(out, 2))
    assert code == 0, output[-3000:]
    assert _files(out) == _files(reference)
    assert _built_table(output) == built  # rank 0 reports the counts of both ranks
    shares = {int(line.split()[3]): int(line.split()[7]) for line in output.splitlines()
              if line.startswith("zoo tiny: rank ")}
    assert sorted(shares) == [0, 1] and all(shares.values())  # both ranks built a share...
    assert sum(shares.values()) == sum(built.values())  # ...and no item was built twice


def _rank_pid(agent: int, rank: int) -> int | None:
    """The pid of torchrun worker ``rank`` (a child of the agent process with that RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_rank_killed_mid_stage_resumes_to_the_same_files(one_process, tmp_path):
    reference, one_built = one_process
    out = tmp_path / "tiny"
    proc = _build(out, 2)
    runs = out / "ground_truth" / "runs"
    deadline = time.monotonic() + TIMEOUT
    # Kill rank 1 once the fine-tuning stage has written its first run (rank 0 cannot pass the
    # stage's barrier without rank 1, so the stage is unfinished).
    while not any(runs.rglob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "no rank 1 process found"
    os.kill(victim, signal.SIGKILL)
    code, output = _finish(proc)
    assert code != 0, output[-3000:]  # torchrun ends rank 0 and fails
    done = list(runs.rglob("*.json"))
    assert done and not (out / "ground_truth.csv").exists() and not (out / "zoo.json").exists()

    code, output = _finish(_build(out, 2))
    assert code == 0, output[-3000:]
    built = _built_table(output)
    assert built["pretrain"] == built["extract"] == 0
    assert 0 < built["groundtruth"] <= one_built["groundtruth"] - len(done)
    assert _files(out) == _files(reference)


def test_label_shards_built_in_parts_then_completed_equal_one_build(tmp_path):
    """What the labels stage does over ranks: each builds its shards (no manifest), then one call
    finds them all and writes the manifest."""
    zoo = tiny_zoo(tmp_path / "zoo")
    config = resolve_label_config(zoo.store_root, targets=zoo.target_datasets, task=TINY_TASKS,
                                  baselines=FAST_BASELINES, shard_size=4)
    build_label_cache(config, tmp_path / "one", 10, progress=False)
    parts = tmp_path / "parts"
    first = build_label_cache(config, parts, 10, progress=False, shards=[0, 2])
    assert (first.computed, first.reused) == (6, 0) and not (parts / MANIFEST).exists()
    second = build_label_cache(config, parts, 10, progress=False, shards=[1])
    assert (second.computed, second.reused) == (4, 0)
    final = build_label_cache(config, parts, 10, progress=False)
    assert (final.computed, final.reused) == (0, 10)
    assert _files(parts) == _files(tmp_path / "one")
