"""One-off costs of a zoo (its build stages, the fine-tuning bank), the bank's protocol agreement and
the ground truth's own seed noise."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from spider.benchmark.inputs import Zoo

__all__ = ["bank_agreement", "bank_runs", "build_stages", "run_files", "seed_agreement"]


def build_stages(zoo: Zoo) -> list[dict[str, Any]]:
    """Stages of the zoo's last build as ``zoo.json`` records them (``name``, ``computed``,
    ``reused``, ``wall_seconds``, ``cpu_seconds``, ``note``); [] for a manifest without them."""
    return [dict(stage) for stage in zoo.manifest.get("last_build") or []]


def run_files(root: Path) -> dict[str, Any]:
    """Fine-tuning runs cached as ``<root>/<task>/<model>/lr<lr>_seed<seed>.json``: how many, over
    how many tasks, and their fine-tuning seconds in total and per run (zeros for no folder)."""
    seconds, tasks = [], set()
    for path in sorted(Path(root).rglob("*.json")) if Path(root).is_dir() else []:
        try:
            seconds.append(float(json.loads(path.read_text())["seconds"]))
            tasks.add(path.relative_to(root).parts[0])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    total = float(np.sum(seconds)) if seconds else None
    return {"runs": len(seconds), "tasks": len(tasks), "seconds": total,
            "seconds_per_run": total / len(seconds) if seconds else None}


def bank_runs(zoo: Zoo) -> dict[str, Any]:
    """:func:`run_files` of the zoo's fine-tuning bank (``<bank>/runs``) and the bank's settings."""
    bank = zoo.manifest.get("data", {}).get("finetune_bank")
    return {**run_files(Path(bank) / "runs" if bank else Path("/nonexistent")), "settings": zoo.manifest.get("bank")}


def bank_agreement(zoo: Zoo, lr: float = 3e-3, seed: int = 0) -> dict[str, float]:
    """``{target: wtau_paper}`` of one fine-tuning run per PTM at (``lr``, ``seed``) - the bank's
    protocol - against the full ground-truth protocol, for every target that has those runs
    (:func:`spider.pipeline.bank.protocol_agreement`); plus ``"mean"``."""
    from spider.datamodules.ground_truth_csv import read_ground_truth
    from spider.pipeline.bank import protocol_agreement

    truth = read_ground_truth(zoo.manifest["data"]["ground_truth"])
    out = protocol_agreement(zoo.root / "ground_truth" / "runs", truth, lr, seed)
    finite = [v for v in out.values() if math.isfinite(v)]
    return {**out, "mean": float(np.mean(finite)) if finite else math.nan}


def seed_agreement(runs_root: Path, details_csv: Path, seeds: tuple[int, ...]) -> dict[str, float]:
    """How far the ground truth is from noise-free: ``{target: wtau_symmetric}`` between the PTM
    rankings of the first two fine-tuning ``seeds``, each pair at its selected learning rate
    (``best_lr`` of ``ground_truth_details.csv``), for every target with both runs of every PTM;
    plus ``"mean"``. ``wtau_symmetric`` because neither seed is the truth. {} with one seed."""
    from spider.metrics.functional import PROTOCOLS, weighted_tau
    from spider.pipeline.finetune import RunCache

    if len(seeds) < 2 or not Path(details_csv).is_file():
        return {}
    rows: dict[str, list[tuple[str, float]]] = {}
    with open(details_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(row["dataset"], []).append((row["model"], float(row["best_lr"])))
    cache, out = RunCache(runs_root), {}
    for target, pairs in rows.items():
        accuracy = np.full((2, len(pairs)), np.nan)
        for j, (model, lr) in enumerate(pairs):
            for i, seed in enumerate(seeds[:2]):
                try:
                    text = cache.path(target, model, lr, seed).read_text()
                    accuracy[i, j] = float(json.loads(text)["test_accuracy"])
                except (OSError, ValueError, KeyError, TypeError):
                    pass
        if np.isfinite(accuracy).all() and len(pairs) >= 2:
            out[target] = float(weighted_tau(preds=accuracy[0], target=accuracy[1], rank=PROTOCOLS["wtau_symmetric"]))
    finite = list(out.values())
    return {**out, "mean": float(np.mean(finite))} if finite else {}
