"""Run a W&B sweep file offline: grid or random search through the ``spider.fit`` CLI.

W&B sweeps need a W&B server (``wandb sweep`` + ``wandb agent``). This script reads the same
``configs/sweep/*.yaml`` and runs each trial as the agent would - the sweep's ``command`` with
``${args_no_hyphens}`` replaced by ``key=value`` items - in a subprocess, with W&B forced offline,
one run folder per trial. It then writes the results table, best first, as CSV and markdown.

Usage::

    python experiments/sweep_local.py configs/sweep/lr_dim.yaml [--out runs/sweeps/lr_dim]
        [--method grid|random] [--count N] [--seed 0] [--timeout 3600] [--dry-run] [key=value ...]

Trailing ``key=value`` items are appended to every trial (e.g. ``logger=csv trainer.max_epochs=1``).
Methods: ``grid`` (every combination of ``values``; distributions are not allowed), ``random``
(``--count`` draws, default the sweep's ``run_cap`` or 10; ``bayes`` sweeps run as random).
Supported parameter forms: ``value``, ``values`` (+ optional ``probabilities``), and
``distribution`` in ``uniform``, ``log_uniform_values``, ``int_uniform``, ``q_uniform``,
``normal``, ``categorical``. A trial whose ``metrics.json`` exists is not run again, so an
interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from spider.io import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent


class SweepError(Exception):
    """The sweep file or the arguments are malformed."""


def read_sweep(path: Path) -> dict[str, Any]:
    try:
        sweep = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read the sweep file ({err})") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise SweepError(f"{path}: expected a mapping with 'parameters'")
    for name, spec in sweep["parameters"].items():
        if not isinstance(spec, dict) or not ({"value", "values", "distribution", "min"} & set(spec)):
            raise SweepError(f"{path}: parameter {name!r}: expected value, values or distribution")
    metric = sweep.get("metric") or {}
    if metric and metric.get("goal", "maximize") not in ("maximize", "minimize"):
        raise SweepError(f"{path}: metric.goal: expected maximize or minimize, got {metric.get('goal')!r}")
    return sweep


def _distribution(spec: dict[str, Any]) -> str:
    if "distribution" in spec:
        return str(spec["distribution"])
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    return "int_uniform" if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int) else "uniform"


def _draw(name: str, spec: dict[str, Any], rng: np.random.Generator) -> Any:
    kind = _distribution(spec)
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        values = spec["values"]
        p = spec.get("probabilities")
        return values[int(rng.choice(len(values), p=p))]
    lo, hi = spec.get("min"), spec.get("max")
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if kind == "int_uniform":
        return int(rng.integers(lo, hi + 1))
    if kind == "q_uniform":
        q = spec.get("q", 1.0)
        return float(round(rng.uniform(lo, hi) / q) * q)
    if kind == "normal":
        return float(rng.normal(spec.get("mu", 0.0), spec.get("sigma", 1.0)))
    raise SweepError(f"parameter {name!r}: distribution {kind!r} is not supported offline")


def trials(sweep: dict[str, Any], method: str, count: int | None, seed: int) -> list[dict[str, Any]]:
    """Parameter settings of every trial (dicts in the sweep file's parameter order)."""
    params: dict[str, dict[str, Any]] = sweep["parameters"]
    if method == "grid":
        axes = []
        for name, spec in params.items():
            kind = _distribution(spec)
            if kind == "constant":
                axes.append([(name, spec["value"])])
            elif kind == "categorical":
                axes.append([(name, v) for v in spec["values"]])
            else:
                raise SweepError(f"parameter {name!r}: grid search needs 'values' or 'value', got a {kind} distribution")
        settings = [dict(combo) for combo in itertools.product(*axes)]
        return settings[:count] if count else settings
    if method in ("random", "bayes"):
        rng = np.random.default_rng(seed)
        n = count or int(sweep.get("run_cap") or 10)
        return [{name: _draw(name, spec, rng) for name, spec in params.items()} for _ in range(n)]
    raise SweepError(f"method: expected grid, random or bayes, got {method!r}")


def command_for(sweep: dict[str, Any], setting: dict[str, Any], extra: Sequence[str]) -> list[str]:
    """The trial's argv: the sweep's ``command`` with W&B's macros filled in as the agent does."""
    args = [f"{name}={value}" for name, value in setting.items()] + list(extra)
    template = sweep.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]
    argv: list[str] = []
    for chunk in template:
        chunk = str(chunk)
        if chunk == "${env}":
            continue  # the environment is inherited
        if chunk in ("${interpreter}", "python", "python3"):
            argv.append(sys.executable)
        elif chunk == "${program}":
            argv.append(str(sweep.get("program", "")))
        elif chunk == "${args_no_hyphens}":
            argv += args
        elif chunk == "${args}":
            argv += [f"--{a}" for a in args]
        else:
            argv.append(chunk)
    return argv


def metric_of(metrics: dict[str, Any], name: str) -> float:
    value = (metrics.get("val") or {}).get(name, metrics.get(name))
    return float(value) if isinstance(value, (int, float)) and value is not None else float("nan")


def run_sweep(sweep_path: Path, out: Path, *, method: str | None = None, count: int | None = None, seed: int = 0,
              timeout: float = 3600.0, dry_run: bool = False, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run (or continue) every trial; return the result rows, best first."""
    sweep = read_sweep(sweep_path)
    method = method or str(sweep.get("method", "grid"))
    metric = (sweep.get("metric") or {}).get("name", "val/wtau_paper")
    goal = (sweep.get("metric") or {}).get("goal", "maximize")
    settings = trials(sweep, method, count, seed)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    if env["WANDB_MODE"] == "online":
        env["WANDB_MODE"] = "offline"
    for i, setting in enumerate(settings):
        trial_dir = out / f"trial-{i:03d}"
        # Each trial: its own run folder, W&B offline; extra items last so they win.
        argv = command_for(sweep, setting, [f"run_dir={trial_dir}", "logger.offline=true", *extra])
        swept = {k: v for k, v in setting.items() if _distribution(sweep["parameters"][k]) != "constant"}
        label = " ".join(f"{k}={v}" for k, v in swept.items())
        print(f"[{i + 1}/{len(settings)}] {label}", flush=True)
        if dry_run:
            print("  " + " ".join(argv))
            continue
        metrics_file = trial_dir / "metrics.json"
        status, seconds = "done", 0.0
        if not metrics_file.is_file():
            trial_dir.mkdir(parents=True, exist_ok=True)
            resume = ["resume=true"] if (trial_dir / "checkpoints" / "last.ckpt").is_file() else []
            start = time.perf_counter()
            try:
                with open(trial_dir / "sweep.log", "w", encoding="utf-8") as log:
                    proc = subprocess.run(argv + resume, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          timeout=timeout)
                status = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                status = f"timed out ({timeout:.0f}s)"
            seconds = time.perf_counter() - start
        else:
            status = "cached"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        row = {"trial": i, **swept, metric: metric_of(metrics, metric),
               "val/wtau_symmetric": metric_of(metrics, "val/wtau_symmetric"),
               "episodes_per_s": metrics.get("episodes_per_second"), "status": status,
               "seconds": round(seconds, 1), "run_dir": str(trial_dir)}
        print(f"  -> {metric} = {row[metric]:.4f} ({status})", flush=True)
        rows.append(row)
        write_tables(rows, out, metric, goal)
    return sort_rows(rows, metric, goal)


def sort_rows(rows: list[dict[str, Any]], metric: str, goal: str) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row[metric]
        if value is None or not math.isfinite(value):
            return (1, 0.0)
        return (0, -value if goal == "maximize" else value)

    return sorted(rows, key=key)


def write_tables(rows: list[dict[str, Any]], out: Path, metric: str, goal: str) -> None:
    """``results.csv`` and ``results.md`` in ``out``, best trial first (written atomically)."""
    ordered = sort_rows(rows, metric, goal)
    columns = list(dict.fromkeys(k for row in ordered for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(ordered)
    write_text_atomic(out / "results.csv", buffer.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in ordered:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="W&B sweep file (configs/sweep/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value items appended to every trial")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/sweeps/<sweep name>)")
    parser.add_argument("--method", choices=("grid", "random", "bayes"), default=None)
    parser.add_argument("--count", type=int, default=None, help="number of trials (random) or the first N (grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random search")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per trial")
    parser.add_argument("--dry-run", action="store_true", help="print the trial commands only")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    try:
        if bad:
            raise SweepError(f"override {bad[0]!r}: expected key=value")
        name = str(read_sweep(args.sweep).get("name") or args.sweep.stem)
        out = args.out or REPO_ROOT / "runs" / "sweeps" / name
        rows = run_sweep(args.sweep, out, method=args.method, count=args.count, seed=args.seed,
                         timeout=args.timeout, dry_run=args.dry_run, extra=args.overrides)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run:
        print((out / "results.md").read_text() if rows else "no trials")
        print(f"results: {out / 'results.csv'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
