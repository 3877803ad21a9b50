"""Smoke test of experiments/bench_baselines.py at toy sizes (the real run takes minutes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "bench_baselines.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_baselines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_bench_writes_table_and_json(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--n", "60", "--n-large", "80", "--d", "8", "--c", "3", "--cs", "6", "--repeats", "2",
            "--baselines", "logme", "hscore", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    assert "x floor" in table and "logme" in table
    report = json.loads(out.read_text())
    rows = {(r["name"], r["n"]) for r in report["results"]}
    assert rows == {("logme", 60), ("hscore", 60), ("logme", 80)}
    for r in report["results"]:
        assert r["seconds"] > 0 and r["ratio"] == pytest.approx(r["seconds"] / r["floor_seconds"])
    assert set(report["floors"]) == {"60", "80"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baselines", "no_such_baseline"], "unknown baseline 'no_such_baseline'"),
        (["--n", "5", "--c", "10"], "--n: need at least one sample per class"),
        (["--repeats", "0"], "--repeats: expected a positive integer"),
    ],
)
def test_bench_bad_arguments_exit_2(bench, capsys, argv, message):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
