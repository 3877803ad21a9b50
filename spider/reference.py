"""The paper's published single-source baseline table, recomputed from its inputs.

Reads ``<reference_dir>/model_spider_single_source/`` (see its README): the ground-truth fine-tuned
accuracies (``finetune_accuracy.csv``), the baselines' published transferability scores
(``baseline_scores.csv``) and the published weighted-tau table (``published_weighted_tau.csv``).
``baseline_weighted_tau_table`` recomputes the table under either weighted-tau protocol and
``compare_tables`` lists the cells that differ from the published ones at the published precision.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spider import paths
from spider.errors import SpiderError
from spider.metrics.functional import weighted_tau

__all__ = [
    "SINGLE_SOURCE",
    "CellMismatch",
    "ReferenceDataError",
    "ScoreTable",
    "baseline_weighted_tau_table",
    "compare_tables",
    "published_weighted_tau_table",
]

#: Folder of the single-source reference inside ``spider.paths.reference_dir()``.
SINGLE_SOURCE = "model_spider_single_source"
MEAN = "Mean"


class ReferenceDataError(SpiderError):
    """A reference file is missing or does not have the expected columns and rows."""


@dataclass(frozen=True)
class ScoreTable:
    """A methods x columns table; ``values`` is float64 ``[len(methods), len(columns)]``.

    ``columns`` are the target datasets followed by ``"Mean"`` (the mean over the datasets).
    """

    methods: list[str]
    columns: list[str]
    values: np.ndarray

    def cell(self, method: str, column: str) -> float:
        return float(self.values[self.methods.index(method), self.columns.index(column)])


@dataclass(frozen=True)
class CellMismatch:
    method: str
    column: str
    computed: float
    published: float

    def __str__(self) -> str:
        return (
            f"{self.method} / {self.column}: {self.computed:.3f} vs published {self.published:.3f}"
        )


def _read_csv(path: Path, required: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ReferenceDataError(f"{path}: file not found (set SPIDER_REFERENCE_DIR)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ReferenceDataError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def _number(path: Path, row: dict[str, str], column: str) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise ReferenceDataError(
            f"{path}: column {column!r} holds {row[column]!r}, expected a number"
        ) from None


def _folder(reference_dir: str | Path | None) -> Path:
    root = paths.reference_dir() if reference_dir is None else Path(reference_dir)
    return root / SINGLE_SOURCE


def published_weighted_tau_table(reference_dir: str | Path | None = None) -> ScoreTable:
    """The published table (``published_weighted_tau.csv``), baselines and Model Spider rows."""
    path = _folder(reference_dir) / "published_weighted_tau.csv"
    rows = _read_csv(path, ["Method", MEAN])
    if not rows:
        raise ReferenceDataError(f"{path}: no rows")
    columns = [c for c in rows[0] if c != "Method"]
    values = np.array([[_number(path, row, c) for c in columns] for row in rows], dtype=np.float64)
    return ScoreTable([row["Method"] for row in rows], columns, values)


def baseline_weighted_tau_table(
    reference_dir: str | Path | None = None, rank: bool | None = None
) -> ScoreTable:
    """Weighted tau between each baseline's published scores and the true accuracies.

    For each dataset: ``weighted_tau(score, accuracy, rank=rank)`` over the PTMs (ground truth
    first; ``rank=None`` is the paper's protocol). Datasets in the order of
    ``published_weighted_tau.csv``, methods in the column order of ``baseline_scores.csv``; the
    last column is the mean over datasets of the unrounded values.
    """
    folder = _folder(reference_dir)
    accuracy_path = folder / "finetune_accuracy.csv"
    scores_path = folder / "baseline_scores.csv"
    accuracy_rows = _read_csv(accuracy_path, ["Dataset", "Model", "Accuracy"])
    score_rows = _read_csv(scores_path, ["Dataset", "Model"])
    methods = [c for c in score_rows[0] if c not in ("Dataset", "Model")] if score_rows else []
    if not methods:
        raise ReferenceDataError(f"{scores_path}: no baseline columns or no rows")
    datasets = [c for c in published_weighted_tau_table(reference_dir).columns if c != MEAN]

    scores = {(r["Dataset"], r["Model"]): r for r in score_rows}
    values = np.empty((len(methods), len(datasets) + 1), dtype=np.float64)
    for d, dataset in enumerate(datasets):
        truth_rows = [r for r in accuracy_rows if r["Dataset"] == dataset]
        if len(truth_rows) < 2:
            raise ReferenceDataError(
                f"{accuracy_path}: fewer than 2 models for dataset {dataset!r}"
            )
        truth = np.array([_number(accuracy_path, r, "Accuracy") for r in truth_rows])
        for m, method in enumerate(methods):
            pred = []
            for r in truth_rows:
                row = scores.get((dataset, r["Model"]))
                if row is None:
                    raise ReferenceDataError(f"{scores_path}: no row for {dataset} / {r['Model']}")
                pred.append(_number(scores_path, row, method))
            values[m, d] = float(weighted_tau(np.array(pred), truth, rank=rank))
    values[:, -1] = values[:, :-1].mean(axis=1)
    return ScoreTable(methods, datasets + [MEAN], values)


def compare_tables(
    computed: ScoreTable, published: ScoreTable, decimals: int = 3
) -> tuple[int, list[CellMismatch]]:
    """Counts cells of ``computed`` equal to ``published`` once rounded to ``decimals``.

    Only methods and columns present in both tables are compared. Returns ``(matches,
    mismatches)``; the number of compared cells is their sum.
    """
    matches, mismatches = 0, []
    tolerance = 0.5 * 10.0**-decimals * 1e-6  # absorbs binary representation of the CSV decimals
    for method in computed.methods:
        if method not in published.methods:
            continue
        for column in computed.columns:
            if column not in published.columns:
                continue
            mine, theirs = computed.cell(method, column), published.cell(method, column)
            if abs(round(mine, decimals) - theirs) <= tolerance:
                matches += 1
            else:
                mismatches.append(CellMismatch(method, column, mine, theirs))
    return matches, mismatches
