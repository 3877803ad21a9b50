"""A finished fine-tuning bank, as the datamodule reads it (built by :mod:`spider.pipeline.bank`).

Files: ``<zoo>/bank/accuracy.csv`` (``dataset,model,accuracy`` with ``dataset = task<i>``) and
``<zoo>/bank/tasks.jsonl`` (``{"task": ..., "spec": ...}`` per line, in bank order).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spider.datamodules.ground_truth_csv import read_ground_truth
from spider.datamodules.tasks import TaskSpec
from spider.errors import SpiderError

__all__ = ["BANK_DIR", "FinetuneBank", "open_bank", "task_id"]

BANK_DIR = "bank"


def task_id(index: int) -> str:
    return f"task{index:04d}"


@dataclass(frozen=True)
class FinetuneBank:
    """A finished bank: ``accuracy[i, j]`` (%) of ``models[j]`` fine-tuned on ``specs[i]``."""

    specs: list[Any]
    models: list[str]
    accuracy: np.ndarray  # float64 [K, M]

    @property
    def num_tasks(self) -> int:
        return len(self.specs)

    def prior(self) -> np.ndarray:
        """Mean fine-tuned accuracy of each PTM over the bank's tasks [M] (the history prior)."""
        return np.nanmean(self.accuracy, axis=0)


def open_bank(root: str | os.PathLike, models: Sequence[str] | None = None) -> FinetuneBank:
    """Read ``<zoo>/bank`` (or the bank folder itself), columns in ``models`` order when given.

    Raises:
        SpiderError: missing files, a task of the CSV absent from ``tasks.jsonl``, a requested
            model without a column, or a non-finite accuracy (one line naming the file).
    """
    root = Path(root)
    if (root / BANK_DIR).is_dir():
        root = root / BANK_DIR
    csv_path, specs_path = root / "accuracy.csv", root / "tasks.jsonl"
    for path in (csv_path, specs_path):
        if not path.is_file():
            raise SpiderError(f"{path}: fine-tuning bank file not found (build it: spider zoo build --stages bank)")
    specs = {}
    for n, line in enumerate(specs_path.read_text().splitlines(), 1):
        try:
            item = json.loads(line)
            specs[item["task"]] = TaskSpec.from_json(item["spec"])
        except (ValueError, KeyError, TypeError, SpiderError) as err:
            raise SpiderError(f"{specs_path}:{n}: expected {{'task': ..., 'spec': ...}} ({err})") from None
    truth = read_ground_truth(csv_path)
    missing = [t for t in truth.datasets if t not in specs]
    if missing:
        raise SpiderError(f"{csv_path}: tasks {missing[:3]} have no spec in {specs_path}")
    columns = list(models) if models is not None else list(truth.models)
    absent = [m for m in columns if m not in truth.models]
    if absent:
        raise SpiderError(f"{csv_path}: no column for model(s) {absent}")
    accuracy = truth.accuracy[:, [truth.models.index(m) for m in columns]].astype(np.float64)
    if not np.isfinite(accuracy).all():
        raise SpiderError(f"{csv_path}: non-finite accuracy (incomplete bank?)")
    return FinetuneBank([specs[t] for t in truth.datasets], columns, accuracy)
