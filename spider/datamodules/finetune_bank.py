"""A finished fine-tuning bank, as the datamodule reads it (built by :mod:`spider.pipeline.bank`).

Files: ``<zoo>/bank/accuracy.csv`` (``dataset,model,accuracy`` with ``dataset = task<i>``: test
accuracy %), ``<zoo>/bank/test_nll.csv`` (``dataset,model,test_nll``: mean test cross-entropy of
the same runs; optional, banks built before it was recorded lack it) and ``<zoo>/bank/tasks.jsonl``
(``{"task": ..., "spec": ...}`` per line, in bank order).
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

__all__ = ["BANK_DIR", "BANK_MEASURES", "FinetuneBank", "open_bank", "task_id"]

BANK_DIR = "bank"
BANK_MEASURES = ("accuracy", "test_nll")  # <measure>.csv of a bank folder


def task_id(index: int) -> str:
    return f"task{index:04d}"


@dataclass(frozen=True)
class FinetuneBank:
    """A finished bank: ``accuracy[i, j]`` (%) of ``models[j]`` fine-tuned on ``specs[i]``."""

    specs: list[Any]
    models: list[str]
    accuracy: np.ndarray  # float64 [K, M]
    # float64 [K, M]; NaN where a run gave no finite cross-entropy (that pair is then unlabelled
    # for finetune_nll); None: the bank predates the measure.
    test_nll: np.ndarray | None = None

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
    accuracy = _columns(truth, csv_path, columns, "accuracy")
    nll_path, test_nll = root / "test_nll.csv", None
    if nll_path.is_file():
        nll = read_ground_truth(nll_path, column="test_nll")
        if nll.datasets != truth.datasets:
            raise SpiderError(f"{nll_path}: tasks differ from those of {csv_path}")
        test_nll = _columns(nll, nll_path, columns, "test_nll", complete=False)
    return FinetuneBank([specs[t] for t in truth.datasets], columns, accuracy, test_nll)


def _columns(table: Any, path: Path, columns: list[str], measure: str, complete: bool = True) -> np.ndarray:
    """``table``'s values [K, len(columns)] in ``columns`` order (all present when ``complete``)."""
    absent = [m for m in columns if m not in table.models]
    if absent:
        raise SpiderError(f"{path}: no column for model(s) {absent}")
    values = table.accuracy[:, [table.models.index(m) for m in columns]].astype(np.float64)
    if complete and not np.isfinite(values).all():
        raise SpiderError(f"{path}: non-finite {measure} (incomplete bank?)")
    return values
