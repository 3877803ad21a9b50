"""Score the models of a feature store on one dataset with transferability baselines.

Usage::

    python -m spider.baselines --store DIR --dataset D [--model M ...] [--split train]
        [--baselines logme,leep,nce,hscore] [--aggregate copeland] [--json OUT|-] [--device cpu]
    python -m spider.baselines --list

Prints one row per model (best first by the aggregate) with every baseline's score and the
aggregate (Copeland by default), as a table or as JSON (``--json -`` prints JSON instead of the
table; ``--json FILE`` writes it and still prints the table). A baseline that fails on a model
gives an empty cell and a ``warning:`` line on stderr. Bad input (missing store, unknown
dataset, model or baseline, inconsistent labels) prints one ``error:`` line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spider.baselines import get_baseline, list_baselines, score_models
from spider.baselines._inputs import checked_device
from spider.baselines.batch import DEFAULT_BASELINES, BaselineFailedWarning
from spider.errors import ArgumentParser, UsageError, cli_main
from spider.io import write_json_atomic

PROG = "python -m spider.baselines"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Score the PTMs of a feature store on a dataset with transferability baselines.")
    p.add_argument("--store", type=Path, help="feature-store root directory")
    p.add_argument("--dataset", help="dataset id in the store")
    p.add_argument("--model", action="append", default=None, metavar="M",
                   help="model id (repeatable; default: every model with an entry for the dataset)")
    p.add_argument("--split", default="train", help="split id (default: train)")
    p.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                   help=f"comma-separated baseline names (default: {','.join(DEFAULT_BASELINES)})")
    p.add_argument("--aggregate", default="copeland", help="rank aggregator over the baselines (default: copeland)")
    p.add_argument("--json", metavar="OUT", help="write results as JSON to OUT ('-' prints JSON instead of the table)")
    p.add_argument("--device", default=None, help="torch device to compute on: cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--list", action="store_true", help="list the registered baselines and exit")
    return p


def _baseline_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--baselines: expected at least one baseline name")
    if len(set(names)) != len(names):
        raise UsageError(f"--baselines: names repeated in {text!r}")
    for name in names:
        get_baseline(name)  # RegistryError lists the available ones
    return names


def _load_inputs(store_root: Path, dataset: str, split: str, models: Sequence[str] | None):
    """Labels [N] shared by all models and ``{model: {features, source_logits}}`` from the store."""
    from spider.store import FeatureStore

    store = FeatureStore(store_root)
    if models is None:
        models = [m for m in store.models() if store.has(m, dataset, split)]
        if not models:
            known = ", ".join(store.datasets()) or "none"
            raise UsageError(
                f"--dataset: no model in {store_root} has an entry {dataset!r}/{split!r} (datasets: {known})"
            )
    elif len(set(models)) != len(models):
        raise UsageError("--model: the same model is given twice")
    labels = None
    inputs: dict[str, dict[str, Any]] = {}
    for model in models:
        entry = store.entry(model, dataset, split)  # StoreError: missing or corrupted entry
        if entry.is_regression:
            raise UsageError(f"{entry.path}: regression labels; the baselines here score classification tasks")
        entry_labels = entry.labels()
        if labels is None:
            labels, first = entry_labels, model
        elif entry_labels.shape != labels.shape or not np.array_equal(entry_labels, labels):
            raise UsageError(f"{entry.path}: labels differ from model {first!r}'s; rows must be the same samples")
        inputs[model] = {"features": entry.features(), "source_logits": entry.logits() if entry.has_logits else None}
    return labels, inputs


def score_dataset(args: argparse.Namespace) -> dict[str, Any]:
    """Run the baselines and the aggregate; returns the JSON-ready result."""
    from spider.aggregate import get_aggregator

    if args.store is None or args.dataset is None:
        raise UsageError("--store and --dataset are required (or use --list)")
    if not args.store.is_dir():
        raise UsageError(f"--store: no such directory {args.store}")
    names = _baseline_names(args.baselines)
    aggregate = get_aggregator(args.aggregate)
    # Checked before any data is read: a missing GPU is one line, not a CUDA traceback mid-run.
    device = None if args.device is None else checked_device(args.device, "--device")
    labels, inputs = _load_inputs(args.store, args.dataset, args.split, args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BaselineFailedWarning)
        scores = score_models(labels, inputs, names, device=device, progress=sys.stderr.isatty())
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    models = list(inputs)
    agg = aggregate(scores)
    return {
        "store": str(args.store),
        "dataset": args.dataset,
        "split": args.split,
        "num_samples": int(labels.shape[0]),
        "num_classes": int(np.unique(labels).size),
        "baselines": names,
        "models": models,
        "scores": {b: {m: _finite_or_none(scores[k, j]) for j, m in enumerate(models)} for k, b in enumerate(names)},
        "aggregate": {
            "name": args.aggregate,
            "scores": {m: _finite_or_none(agg.scores[j]) for j, m in enumerate(models)},
            "ranking": [models[int(i)] for i in agg.ranking],
        },
    }


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _console(table: Any) -> Any:
    """A console wide enough for ``table`` (rich assumes 80 columns when writing to a pipe)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    needed = Measurement.get(console, console.options.update(width=10_000), table).maximum
    return Console(width=max(console.width, needed)) if needed > console.width else console


def _print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    agg = result["aggregate"]
    table = Table(title=f"{result['dataset']}/{result['split']}: N={result['num_samples']}, C={result['num_classes']}")
    table.add_column("rank", justify="right")
    table.add_column("model")
    for name in result["baselines"]:
        table.add_column(name, justify="right")
    table.add_column(agg["name"], justify="right", style="bold")
    for rank, model in enumerate(agg["ranking"], start=1):
        cells = [_fmt(result["scores"][b][model]) for b in result["baselines"]]
        table.add_row(str(rank), model, *cells, _fmt(agg["scores"][model]))
    _console(table).print(table)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _print_list() -> None:
    from rich.table import Table

    table = Table(title="registered baselines")
    for column in ("name", "needs", "tasks", "deterministic", "scale-invariant", "description"):
        table.add_column(column)
    for name in list_baselines():
        b = get_baseline(name)
        flags = ["yes" if flag else "no" for flag in (b.deterministic, b.scale_invariant)]
        table.add_row(name, ",".join(sorted(b.needs)), ",".join(sorted(b.tasks)), *flags, b.doc)
    _console(table).print(table)


def _write_json(result: dict[str, Any], out: str) -> None:
    if out == "-":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    path = Path(out)
    if not path.parent.is_dir():
        raise UsageError(f"--json: directory {path.parent} does not exist")
    write_json_atomic(path, result)  # an interrupted run never leaves a truncated JSON file


@cli_main(OSError)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.list:
        _print_list()
        return 0
    result = score_dataset(args)
    if args.json is not None:
        _write_json(result, args.json)
    if args.json != "-":
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
