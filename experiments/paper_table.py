"""Recompute the paper's single-source baseline table (weighted tau) under both protocols.

    python experiments/paper_table.py [--reference-dir DIR] [--json]

Each method gets a row per protocol (``spider.metrics.functional.PROTOCOLS``): ``wtau_paper`` is
``scipy.stats.weightedtau(accuracy, score, rank=None)`` as in the authors' code, ``wtau_symmetric``
scipy's default ``rank=True``. Cells where the paper protocol disagrees with the published table
at 3 decimals are marked ``*`` and listed below the table. Exit code 2 on missing or malformed
reference files.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from spider.errors import SpiderError
from spider.metrics.functional import PROTOCOLS
from spider.reference import (
    ScoreTable,
    baseline_weighted_tau_table,
    compare_tables,
    published_weighted_tau_table,
)


def build_report(reference_dir: str | None) -> dict:
    """Both recomputed tables, the published one and the comparison (paper protocol)."""
    tables: dict[str, ScoreTable] = {
        name: baseline_weighted_tau_table(reference_dir, rank=rank)
        for name, rank in PROTOCOLS.items()
    }
    published = published_weighted_tau_table(reference_dir)
    matches, mismatches = compare_tables(tables["wtau_paper"], published)
    return {"tables": tables, "published": published, "matches": matches, "mismatches": mismatches}


def _as_json(report: dict) -> str:
    def table(t: ScoreTable) -> dict:
        return {m: dict(zip(t.columns, map(float, row))) for m, row in zip(t.methods, t.values)}

    return json.dumps(
        {
            "protocols": {name: repr(rank) for name, rank in PROTOCOLS.items()},
            "tables": {name: table(t) for name, t in report["tables"].items()},
            "published": table(report["published"]),
            "matching_cells": report["matches"],
            "compared_cells": report["matches"] + len(report["mismatches"]),
            "mismatches": [vars(m) for m in report["mismatches"]],
        },
        indent=2,
    )


def _print_rich(report: dict, console: Console) -> None:
    paper, symmetric = report["tables"]["wtau_paper"], report["tables"]["wtau_symmetric"]
    differing = {(m.method, m.column) for m in report["mismatches"]}
    table = Table(title="Weighted tau of the published baseline scores vs fine-tuned accuracy")
    table.add_column("Method")
    table.add_column("Protocol")
    for column in paper.columns:
        table.add_column(column, justify="right")
    for method in paper.methods:
        table.add_row(
            method,
            "wtau_paper",
            *(f"{paper.cell(method, c):.3f}{'*' if (method, c) in differing else ' '}"
              for c in paper.columns),
        )
        table.add_row(
            "", "wtau_symmetric", *(f"{symmetric.cell(method, c):.3f} " for c in paper.columns),
            end_section=True,
        )
    console.print(table)
    compared = report["matches"] + len(report["mismatches"])
    console.print(
        f"wtau_paper matches the published table in {report['matches']} of {compared} cells "
        "(3 decimals). Differing cells (*):"
    )
    for mismatch in report["mismatches"]:
        console.print(f"  {mismatch}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", help="default: spider.paths.reference_dir()")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.reference_dir)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(_as_json(report))
    else:
        _print_rich(report, Console(width=160))
    return 0


if __name__ == "__main__":
    sys.exit(main())
