"""Forward baselines on whole targets: every applicable baseline on every PTM's stored features
(or source logits) of every target, timed, cached per ``baseline|target``."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from spider.benchmark.inputs import JsonCache, Zoo

__all__ = ["applicable_baselines", "baseline_errors", "copeland_scores", "run_baselines"]


def applicable_baselines() -> list[str]:
    """Every registered baseline that ranks PTMs for classification targets."""
    from spider.baselines import get_baseline, list_baselines

    return [b for b in list_baselines() if "classification" in get_baseline(b).tasks]


def _contiguous(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _call(name: str, labels: np.ndarray, inputs: Mapping[str, Any]) -> float:
    from spider.baselines import get_baseline

    baseline = get_baseline(name)
    kwargs = {k: inputs[k] for k in baseline.needs}
    if any(v is None for v in kwargs.values()):
        raise ValueError("the PTM has no stored source logits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(baseline(labels=labels, **kwargs))


def run_baselines(zoo: Zoo, names: Sequence[str], cache: JsonCache,
                  log: Callable[[str], None] = lambda _: None) -> tuple[dict, dict]:
    """Returns ``(scores, seconds)``, each ``{baseline: [T, M] float64}`` over ``zoo.targets``;
    NaN score where a baseline failed (its error is kept in the cache, see :func:`baseline_errors`)."""
    todo = [t for t in zoo.targets if any(cache.get(f"{b}|{t}") is None for b in names)]
    warmed = False
    for i, target in enumerate(todo):
        labels = _contiguous(zoo.store.entry(zoo.general, target).labels())
        rows: dict[str, dict[str, list]] = {b: {"score": [], "seconds": [], "error": []} for b in names}
        for model in zoo.models:
            entry = zoo.store.entry(model, target)
            inputs = {"features": np.ascontiguousarray(entry.features(), dtype=np.float32),
                      "source_logits": np.ascontiguousarray(entry.logits(), dtype=np.float32)
                      if entry.has_logits else None}
            if not warmed:  # first calls pay one-off costs (imports, kernel selection): untimed
                for name in names:
                    with contextlib.suppress(Exception):
                        _call(name, labels, inputs)
                warmed = True
            for name in names:
                error = ""
                start = time.perf_counter()
                try:
                    value = _call(name, labels, inputs)
                except Exception as err:  # noqa: BLE001 - any failure is a NaN cell, reported
                    value, error = math.nan, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                rows[name]["seconds"].append(time.perf_counter() - start)
                rows[name]["score"].append(value if math.isfinite(value) else None)
                rows[name]["error"].append(error)
        for name in names:
            cache.put(f"{name}|{target}", rows[name])
        log(f"baselines {i + 1}/{len(todo)}: {target}")
    scores = {b: np.array([[np.nan if v is None else v for v in cache.get(f"{b}|{t}")["score"]]
                           for t in zoo.targets], dtype=np.float64) for b in names}
    seconds = {b: np.array([cache.get(f"{b}|{t}")["seconds"] for t in zoo.targets], dtype=np.float64)
               for b in names}
    return scores, seconds


def baseline_errors(zoo: Zoo, names: Sequence[str], cache: JsonCache) -> list[str]:
    """``"<baseline> on <model>/<target>: <error>"`` for every failed cell."""
    return [f"{b} on {m}/{t}: {error}" for b in names for t in zoo.targets
            for m, error in zip(zoo.models, cache.get(f"{b}|{t}")["error"]) if error]


def copeland_scores(scores: Mapping[str, np.ndarray], members: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The Copeland aggregate of ``members``' scores [T, M]: ``(scores [T, M], seconds [T])``
    (seconds: the aggregation itself; add the members' own time for the method's cost)."""
    from spider.aggregate import copeland

    num_targets = next(iter(scores.values())).shape[0]
    out, seconds = [], []
    for t in range(num_targets):
        start = time.perf_counter()
        out.append(np.asarray(copeland(np.stack([scores[b][t] for b in members])).scores, dtype=np.float64))
        seconds.append(time.perf_counter() - start)
    return np.stack(out), np.asarray(seconds)
