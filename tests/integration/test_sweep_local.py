"""Sweep files (W&B format) and their offline runner ``experiments/sweep_local.py``."""

from __future__ import annotations

import csv
import importlib.util
import sys

import pytest

from spider.config import compose, config_dir
from spider.paths import REPO_ROOT

SWEEPS = sorted((config_dir() / "sweep").glob("*.yaml"))


@pytest.fixture(scope="module")
def sweep_local():
    spec = importlib.util.spec_from_file_location("sweep_local", REPO_ROOT / "experiments" / "sweep_local.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_local"] = module
    spec.loader.exec_module(module)
    return module


def test_there_are_sweep_files():
    assert len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_wandb_format_and_every_trial_is_a_valid_config(sweep_local, path):
    sweep = sweep_local.read_sweep(path)
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"].startswith("val/")
    assert sweep["command"] == ["${env}", "python", "-m", "spider.fit", "${args_no_hyphens}"]
    for setting in sweep_local.trials(sweep, sweep["method"], 4, seed=0):
        argv = sweep_local.command_for(sweep, setting, [])
        assert argv[:3] == [sys.executable, "-m", "spider.fit"]
        compose(argv[3:])  # raises ConfigError on an unknown key or a wrong type


def test_grid_and_random_trials(sweep_local):
    sweep = {"parameters": {"model.lr": {"values": [0.1, 0.2]}, "model.dim": {"values": [8, 16, 32]},
                            "seed": {"value": 3}}}
    grid = sweep_local.trials(sweep, "grid", None, 0)
    assert len(grid) == 6 and {t["seed"] for t in grid} == {3}
    assert {(t["model.lr"], t["model.dim"]) for t in grid} == {(a, b) for a in (0.1, 0.2) for b in (8, 16, 32)}
    sweep["parameters"]["model.dropout"] = {"distribution": "uniform", "min": 0.0, "max": 0.5}
    sweep["parameters"]["model.depth"] = {"distribution": "int_uniform", "min": 1, "max": 3}
    first = sweep_local.trials(sweep, "random", 5, seed=1)
    assert first == sweep_local.trials(sweep, "random", 5, seed=1)  # reproducible
    assert all(0.0 <= t["model.dropout"] <= 0.5 and t["model.depth"] in (1, 2, 3) for t in first)
    with pytest.raises(sweep_local.SweepError, match="grid search needs"):
        sweep_local.trials(sweep, "grid", None, 0)


def test_command_fills_the_wandb_macros(sweep_local):
    sweep = {"command": ["${env}", "python", "-m", "spider.fit", "${args_no_hyphens}"], "parameters": {}}
    argv = sweep_local.command_for(sweep, {"model.lr": 0.001, "data": "tiny"}, ["run_dir=x"])
    assert argv == [sys.executable, "-m", "spider.fit", "model.lr=0.001", "data=tiny", "run_dir=x"]


@pytest.mark.slow
def test_local_sweep_runs_trials_and_writes_the_table(sweep_local, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\nmethod: grid\nmetric: {name: val/wtau_paper, goal: maximize}\n"
        "parameters:\n  model.lr: {values: [0.001, 0.01]}\n  data: {value: tiny}\n"
        "  trainer.max_epochs: {value: 1}\n"
        "command: ['${env}', python, -m, spider.fit, '${args_no_hyphens}']\n"
    )
    out = tmp_path / "out"
    extra = ["logger=none", f"data.cache_dir={tmp_path / 'cache'}", "data.baselines=[leep,nce]",
             "trainer.accelerator=cpu", "results_table=false"]
    rows = sweep_local.run_sweep(path, out, timeout=300, extra=extra)
    assert [r["status"] for r in rows] == ["done", "done"]
    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert {float(r["model.lr"]) for r in table} == {0.001, 0.01}
    values = [float(r["val/wtau_paper"]) for r in table]
    assert values == sorted(values, reverse=True)  # best first
    assert (out / "results.md").read_text().startswith("| trial |")
    # Finished trials are not run again.
    assert [r["status"] for r in sweep_local.run_sweep(path, out, extra=extra)] == ["cached", "cached"]
