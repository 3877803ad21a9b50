"""Markdown pieces of a benchmark report: numbers, tables, provenance (commit, machine)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spider.benchmark.methods import MethodResult

__all__ = ["ablation_table", "build_cost_table", "cost_table", "fmt", "fmt_seconds", "git_commit", "machine",
           "metric_table", "table"]


def fmt(value: Any, digits: int = 3, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_seconds(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _digits(metric: str) -> tuple[int, bool]:
    return (2, False) if metric == "top1_regret" else (3, True)


def metric_table(rows: Sequence[MethodResult], targets: Sequence[str], metric: str, stage: str) -> str:
    """Methods as rows, ``targets`` then their mean (± std over seeds) as columns."""
    digits, signed = _digits(metric)
    body = []
    for row in rows:
        mean = fmt(row.mean(metric, targets), digits, signed)
        if row.spread.get(stage, {}).get(metric):
            mean += f" ± {row.spread[stage][metric]:.{digits}f}"
        body.append([row.name, *(fmt(v, digits, signed) for v in row.values(metric, targets)), f"**{mean}**"])
    return table(["method", *targets, "**mean**"], body)


def cost_table(rows: Sequence[MethodResult], targets: Sequence[str], reference: MethodResult) -> str:
    """Cost of one selection, mean over ``targets``, and its share of ``reference``'s time."""
    ref = reference.mean_seconds(targets)
    mean = lambda d: sum(d[t] for t in targets) / len(targets)  # noqa: E731
    return table(["method", "PTM forward passes", "general-encoder passes", "extraction", "scoring", "total",
                  f"share of {reference.name}'s time"],
                 [[r.name, r.ptm_passes, r.general_passes, fmt_seconds(mean(r.extract_seconds)),
                   fmt_seconds(mean(r.score_seconds)), fmt_seconds(r.mean_seconds(targets)),
                   f"{100 * r.mean_seconds(targets) / ref:.2f}%"] for r in rows])


def ablation_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """An ablation: validation means of every setting and its share of wins over resampled
    validation targets; test only for the chosen one."""
    body = []
    for e in entries:
        cells = []
        for metric in ("wtau_paper", "wtau_symmetric", "top1_regret"):
            digits, signed = _digits(metric)
            text = fmt(e["val"][metric], digits, signed)
            if e["val_std"].get(metric):
                text += f" ± {e['val_std'][metric]:.{digits}f}"
            cells.append(text)
        share = e.get("val_win_share", math.nan)
        cells.append(f"{100 * share:.0f} %" if math.isfinite(share) else "")
        test = fmt(e["test"]["wtau_paper"]) if e.get("test") else "(not looked at)"
        body.append([e["setting"] + (" **(chosen)**" if e.get("winner") else ""), *cells, test, e["seeds"]])
    return table(["setting", "val wtau_paper", "val wtau_symmetric", "val top-1 regret",
                  "val wins (targets resampled)", "test wtau_paper", "seeds"], body)


def build_cost_table(stages: Sequence[Mapping[str, Any]], bank: Mapping[str, Any],
                     ground_truth: Mapping[str, Any] | None = None) -> str:
    """The zoo build's stages (one-off costs), then the fine-tuning runs of the ground truth and
    of the bank (:func:`spider.benchmark.costs.run_files`)."""
    body = [[s["name"], s.get("computed", ""), s.get("reused", ""), fmt_seconds(s.get("wall_seconds")),
             fmt_seconds(s.get("cpu_seconds")), s.get("note", "")] for s in stages]
    for name, runs in (("ground-truth runs (their JSON files)", ground_truth or {}),
                       ("bank runs (their JSON files)", bank)):
        if runs.get("runs"):
            body.append([name, runs["runs"], f"{runs['tasks']} tasks", "", fmt_seconds(runs["seconds"]),
                         f"{fmt_seconds(runs['seconds_per_run'])} per run"])
    return table(["stage", "computed", "reused", "wall", "cpu", "note"], body)


def git_commit(repo: Path, paths: Sequence[str] = ("spider", "configs", "experiments")) -> str:
    """HEAD, plus the changed files under ``paths`` the numbers may depend on (the shipped configs
    among them: a report ranks with their settings)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = sorted({line[3:].strip() for line in dirty if line.strip()})
    if not changed:
        return head
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return f"{head} plus uncommitted changes to {shown}"


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}; timings single-threaded")
