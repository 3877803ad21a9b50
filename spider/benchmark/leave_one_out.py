"""Adding a PTM without retraining: the leave-one-PTM-out numbers of ``experiments/<zoo>/incremental.py``.

That script writes ``incremental.json``: for each held-out PTM h, the weighted tau (paper protocol)
per validation/test target and h's rank error per target, of the ranker trained on the other PTMs
with h added by :func:`spider.incremental.add_model` (``incremental``) and of one full retrain on
every PTM (``full``), and add-model's seconds per stage. Here those files are read and checked,
reduced to per-PTM means and to means over the held-out PTMs, and rendered for the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spider.benchmark.inputs import ReportError, Zoo

__all__ = ["STAGES", "ptm_means", "results_entry", "section", "summarise"]

STAGES = ("extract", "bank", "labels", "train", "total")  # add-model's timed stages (report.seconds)
_RESULTS = ("wtau_val", "wtau_test", "rank_error")


def _field(data: Any, path: Sequence[str], source: str) -> Any:
    """``data[path[0]][path[1]]...``, or a ReportError naming the missing field."""
    for i, key in enumerate(path):
        if not isinstance(data, Mapping) or key not in data:
            raise ReportError(f"{source}: field {'.'.join(path[:i + 1])} missing (expected the layout of "
                              "experiments/minizoo/incremental.py)")
        data = data[key]
    return data


def _number(data: Any, path: Sequence[str], source: str) -> float:
    value = _field(data, path, source)
    # bool is an int subclass; a NaN/inf would silently poison every mean below.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportError(f"{source}: field {'.'.join(path)} must be a finite number, got {value!r}")
    return float(value)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _target_mean(entry: Mapping, path: Sequence[str], targets: Sequence[str], source: str) -> float:
    return _mean([_number(entry, [*path, t], source) for t in targets])


def _targets(results: Mapping, key: str, source: str) -> list[str]:
    targets = _field(results, [key], source)
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ReportError(f"{source}: field {key} must be a non-empty list of target names, got {targets!r}")
    return targets


def ptm_means(results: Mapping, model: str, source: str = "incremental.json") -> dict[str, Any]:
    """One held-out PTM: wtau on the validation/test targets (mean) and rank error (mean over all
    targets), ``incremental`` and ``full``; add-model ``seconds`` per stage; ``from_scratch``;
    ``retrain_seconds``, the training of the ranker on the other PTMs, timed in the same process just
    before the add (the paired estimate of a full retrain's cost under the same machine load)."""
    val, test = _targets(results, "val_targets", source), _targets(results, "test_targets", source)
    entry = _field(results, ["held_out", model], source)
    where = f"held_out.{model}"
    out: dict[str, Any] = {}
    for kind in ("incremental", "full"):
        out[kind] = {
            "wtau_val": _target_mean(entry, [kind, "wtau"], val, f"{source} ({where})"),
            "wtau_test": _target_mean(entry, [kind, "wtau"], test, f"{source} ({where})"),
            "rank_error": _target_mean(entry, [kind, "rank_error"], val + test, f"{source} ({where})")}
    out["seconds"] = {s: _number(entry, ["add", "seconds", s], f"{source} ({where})") for s in STAGES}
    out["retrain_seconds"] = _number(entry, ["train19_seconds"], f"{source} ({where})")
    from_scratch = entry.get("from_scratch", True)  # rows written before the flag existed were from scratch
    if not isinstance(from_scratch, bool):
        raise ReportError(f"{source}: field {where}.from_scratch must be true or false, got {from_scratch!r}")
    out["from_scratch"] = from_scratch
    return out


def summarise(results: Mapping, source: str = "incremental.json") -> dict[str, Any]:
    """Means over the held-out PTMs of :func:`ptm_means` (``incremental``, ``full``, add-model
    ``seconds``), the full retrain's training seconds, and the add-model seconds of the PTMs added
    from scratch (``seconds_from_scratch``, None if none: the others read h's features and bank runs
    from the build, so their extract and bank stages cost nothing)."""
    held = _field(results, ["held_out"], source)
    if not isinstance(held, Mapping) or not held:
        raise ReportError(f"{source}: field held_out must map at least one held-out PTM to its results")
    rows = {m: ptm_means(results, m, source) for m in held}
    scratch = [r for r in rows.values() if r["from_scratch"]]

    def means(kind: str, keys: Sequence[str], among: Sequence[Mapping]) -> dict[str, float]:
        return {k: _mean([r[kind][k] for r in among]) for k in keys}

    return {"held_out": len(rows), "models": list(rows),
            "from_scratch": [m for m, r in rows.items() if r["from_scratch"]],
            "incremental": means("incremental", _RESULTS, list(rows.values())),
            "full": means("full", _RESULTS, list(rows.values())),
            "seconds": means("seconds", STAGES, list(rows.values())),
            "seconds_from_scratch": means("seconds", STAGES, scratch) if scratch else None,
            "retrain_seconds": _mean([r["retrain_seconds"] for r in rows.values()]),
            "full_train_seconds": _number(results, ["full", "train_seconds"], source)}


def results_entry(path: str | Path, zoo: Zoo) -> dict[str, Any]:
    """``{"incremental": summarise(<the incremental.json at path>)}`` for the report's results, or {}
    when there is no such file (the measurement is optional). Its targets and held-out PTMs must be
    ``zoo``'s: a file measured on another zoo is an error, not a section of this report."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not a readable JSON file ({err})") from err
    summary = summarise(results, str(path))
    for key, expected in (("val_targets", zoo.val_targets), ("test_targets", zoo.test_targets)):
        if results[key] != list(expected):
            raise ReportError(f"{path}: field {key} is {results[key]}, expected this zoo's {list(expected)}")
    strangers = [m for m in summary["models"] if m not in zoo.models]
    if strangers:
        raise ReportError(f"{path}: held-out PTMs {strangers} are not PTMs of the zoo {zoo.root}")
    return {"incremental": summary}


def section(summary: Mapping[str, Any] | None) -> list[str]:
    """The report's markdown lines for a :func:`summarise` result ([] for None: no measurement)."""
    if summary is None:
        return []
    inc, full, s = summary["incremental"], summary["full"], summary["seconds"]
    n = summary["held_out"]
    lines = ["", "## Adding a PTM without retraining (leave-one-PTM-out)",
             f"For each of {n} held-out PTMs h: the ranker trained on the other PTMs, then h added with "
             "`spider zoo add-model` (only h's token is trained), vs one full retrain on every PTM (same config "
             "and seed). wtau = weighted tau (paper protocol) of the whole ranking, mean over the targets of the "
             "stage; rank error = |predicted - true rank| of h, mean over every target. Means over the held-out "
             f"PTMs ({', '.join(f'`{m}`' for m in summary['models'])}); per-PTM rows in "
             "[incremental.md](incremental.md). The full retrain is one run, the incremental rankers are "
             f"{n} different runs (one per h): differences in wtau include run-to-run variation.", "",
             "| ranker | wtau val | wtau test | rank error of h | training s |", "|---|---|---|---|---|",
             f"| h added incrementally | {inc['wtau_val']:.3f} | {inc['wtau_test']:.3f} | {inc['rank_error']:.2f} | "
             f"{s['train']:.1f} |",
             f"| full retrain | {full['wtau_val']:.3f} | {full['wtau_test']:.3f} | {full['rank_error']:.2f} | "
             f"{summary['full_train_seconds']:.1f} |", ""]
    scratch = summary["seconds_from_scratch"]
    stages = ("whole add-model, from scratch ({} PTM(s)): {total:.0f} s (extract {extract:.0f} / bank {bank:.0f} / "
              "labels {labels:.0f} / train {train:.1f})".format(len(summary["from_scratch"]), **scratch)
              if scratch else "no PTM was added from scratch")
    lines.append("Training s: add-model's token training vs the full retrain's training (one run, timed once). "
                 "Paired under the same machine load: training the ranker on the other PTMs, timed just before "
                 f"each add, took {summary['retrain_seconds']:.1f} s (mean) vs {s['train']:.1f} s for h's token. "
                 f"Both need h's features, fine-tuning-bank runs and baselines first; {stages}. Mean labels stage "
                 f"(h's baselines) over every held-out PTM: {s['labels']:.0f} s.")
    return lines
