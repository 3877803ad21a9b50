"""Ground-truth transfer performance of PTMs on target datasets (the evaluation labels).

File format: CSV with a header row holding at least ``dataset,model,accuracy`` (any order; other
columns are ignored), one row per (target dataset, PTM); ``accuracy`` is the fine-tuned test
accuracy in percent (for regression targets any score where higher is better). A pair without a
row is "unknown" (NaN in the matrix, masked out in evaluation). Other measures of the same runs
use the same format with their own value column (``column=``, e.g. the fine-tuning bank's
``test_nll``). Example::

    dataset,model,accuracy
    aircraft,resnet50,84.6
    aircraft,densenet201,85.1
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spider.errors import SpiderError
from spider.io import write_atomic

__all__ = ["GroundTruth", "GroundTruthError", "read_ground_truth", "write_ground_truth", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("dataset", "model", "accuracy")


class GroundTruthError(SpiderError, ValueError):
    """A ground-truth file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class GroundTruth:
    """``accuracy[t, m]`` of ``models[m]`` on ``datasets[t]`` (NaN where unknown).

    Datasets and models are in order of first appearance in the file.
    """

    datasets: list[str]
    models: list[str]
    accuracy: np.ndarray  # [T, M] float64

    def matrix(self, datasets: Sequence[str], models: Sequence[str]) -> np.ndarray:
        """[len(datasets), len(models)] float64 re-indexed to the given orders (NaN where unknown)."""
        out = np.full((len(datasets), len(models)), np.nan)
        d_index = {d: i for i, d in enumerate(self.datasets)}
        m_index = {m: j for j, m in enumerate(self.models)}
        for i, d in enumerate(datasets):
            if d not in d_index:
                continue
            cols = [(j, m_index[m]) for j, m in enumerate(models) if m in m_index]
            if cols:
                dst, src = zip(*cols)
                out[i, list(dst)] = self.accuracy[d_index[d], list(src)]
        return out


def read_ground_truth(path: str | os.PathLike, column: str = "accuracy") -> GroundTruth:
    """Parse a ground-truth CSV (values from ``column``); :class:`GroundTruthError` names the file
    and line of any problem."""
    path = Path(path)
    required = (*REQUIRED_COLUMNS[:2], column)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise GroundTruthError(f"{path}: ground-truth file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GroundTruthError(f"{path}: cannot read ground-truth file ({err})") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise GroundTruthError(f"{path}:1: empty file; expected a header with columns {','.join(required)}")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise GroundTruthError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                               f"(expected {','.join(required)}, got {','.join(header)})")
    col = {c: header.index(c) for c in required}
    values: dict[tuple[str, str], float] = {}
    first_line: dict[tuple[str, str], int] = {}
    datasets: dict[str, None] = {}
    models: dict[str, None] = {}
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(col.values()):
            raise GroundTruthError(f"{path}:{line_no}: expected at least {max(col.values()) + 1} columns "
                                   f"({','.join(header)}), got {len(row)}")
        dataset, model, raw = (row[col[c]].strip() for c in required)
        if not dataset or not model:
            raise GroundTruthError(f"{path}:{line_no}: empty dataset or model field")
        try:
            accuracy = float(raw)
        except ValueError:
            raise GroundTruthError(f"{path}:{line_no}: {column} {raw!r} is not a number") from None
        if not math.isfinite(accuracy):
            raise GroundTruthError(f"{path}:{line_no}: {column} {raw!r} is not finite (omit unknown pairs)")
        key = (dataset, model)
        if key in values:
            raise GroundTruthError(f"{path}:{line_no}: duplicate row for dataset {dataset!r}, model {model!r} "
                                   f"(first on line {first_line[key]})")
        values[key] = accuracy
        first_line[key] = line_no
        datasets.setdefault(dataset)
        models.setdefault(model)
    if not values:
        raise GroundTruthError(f"{path}: no data rows after the header")
    d_list, m_list = list(datasets), list(models)
    accuracy = np.full((len(d_list), len(m_list)), np.nan)
    d_index = {d: i for i, d in enumerate(d_list)}
    m_index = {m: j for j, m in enumerate(m_list)}
    for (d, m), v in values.items():
        accuracy[d_index[d], m_index[m]] = v
    return GroundTruth(d_list, m_list, accuracy)


def write_ground_truth(path: str | os.PathLike, truth: GroundTruth, column: str = "accuracy") -> Path:
    """Write ``truth`` as CSV with value column ``column`` (NaN entries are left out), atomically
    (temp file + rename)."""
    path = Path(path)
    accuracy = np.asarray(truth.accuracy, dtype=np.float64)
    if accuracy.shape != (len(truth.datasets), len(truth.models)):
        raise GroundTruthError(f"{path}: accuracy has shape {accuracy.shape}, expected "
                               f"({len(truth.datasets)}, {len(truth.models)})")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow((*REQUIRED_COLUMNS[:2], column))
    for i, dataset in enumerate(truth.datasets):
        for j, model in enumerate(truth.models):
            if np.isfinite(accuracy[i, j]):
                writer.writerow([dataset, model, repr(float(accuracy[i, j]))])
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue().encode("utf-8")))
    return path
