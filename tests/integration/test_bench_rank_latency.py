"""Smoke test of experiments/bench_rank_latency.py at toy sizes (the real table takes minutes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import spider.rank_core as rank_core

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench_rank_latency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_rank_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("threshold", [10_000, 100])  # exact forward, then the two-stage search
def test_json_last_line_parses(bench, capsys, monkeypatch, threshold, one_torch_thread):
    monkeypatch.setattr(rank_core, "FAST_PATH_MIN_MODELS", threshold)
    argv = ["--models", "150", "600", "--tasks", "3", "--task-dim", "8", "--dim", "16", "--classes", "4",
            "--pool", "64", "--anchors", "16", "--threads", "1", "--json"]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.split()[:1] == ["150"] for line in lines)  # one table row per M
    last = json.loads(lines[-1])
    assert set(last) == {"models", "ms", "top10_agreement"} and last["models"] == 600
    assert last["ms"] > 0 and 0.0 <= last["top10_agreement"] <= 1.0
    if threshold > 600:
        assert last["top10_agreement"] == 1.0  # the exact forward agrees with itself


def test_checkpoint_without_store_exits_2(bench, tmp_path, capsys):
    assert bench.main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--models", "10"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_empty_zoo_exits_2(bench, capsys):
    assert bench.main(["--models", "0", "--tasks", "1", "--task-dim", "8", "--dim", "8"]) == 2
    assert "num_models: expected an integer >= 1" in capsys.readouterr().err
