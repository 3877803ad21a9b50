"""LGC on whole targets: every PTM of the zoo on every target's labelled train images, timed, cached
per ``model|target``; and its result row.

LGC needs the network (per-sample gradients), not stored features: each PTM is loaded once (like
:func:`~spider.benchmark.timing.time_extraction`, loading excluded from the time) and run on the
target's images preprocessed as extraction does (:func:`spider.model_score.score_prepared`). Its
seconds are its whole cost per target: the forward and backward passes are inside the score.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from spider.baselines.lgc import DEFAULT_MAX_PARAMS
from spider.benchmark.inputs import JsonCache, ReportError, Zoo
from spider.benchmark.timing import model_refs

__all__ = ["LGC_OPTIONS", "lgc_row", "run_lgc"]

#: The settings of the report's LGC (part of the cache identity: a change recomputes).
LGC_OPTIONS = {"max_params": DEFAULT_MAX_PARAMS, "batch_size": 32, "seed": 0}


def run_lgc(zoo: Zoo, cache: JsonCache, log: Callable[[str], None] = lambda _: None,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(scores [T, M], seconds [T, M], errors)`` over ``zoo.targets`` x ``zoo.models``; a NaN score
    where LGC failed (``errors``: ``"lgc on <model>/<target>: <error>"``)."""
    from spider.model_score import score_prepared

    options = dict(LGC_OPTIONS)
    refs = model_refs(zoo)
    # A cell is one PTM's weights on one target's images: valid in any zoo that holds both, so a
    # cell is recomputed only when that PTM's weights changed (``cache`` identity: host, threads, options).
    todo = [(m, t) for m in zoo.models for t in zoo.targets
            if (cache.get(f"{m}|{t}") or {}).get("weights") != refs[m].weights]
    if todo:
        recipe_targets = {t.id: t for t in zoo.recipe.all_targets}
        views = {t: recipe_targets[t].load(zoo.data_dir)["train"] for t in dict.fromkeys(t for _, t in todo)}
        for target, view in views.items():
            stored = zoo.store.entry(zoo.general, target).labels()
            if not np.array_equal(np.asarray(stored).reshape(-1), view.labels):
                raise ReportError(f"target {target}: the recipe's train images are not the stored rows (labels differ)")
        done = 0
        for model in dict.fromkeys(m for m, _ in todo):
            prepared = refs[model].load(zoo.data_dir)
            first = views[next(t for m, t in todo if m == model)]
            # untimed warm-up (imports, kernel selection, vmap tracing) on 8 images of two classes
            score_prepared("lgc", prepared, first.images[:8], np.arange(8) % 2, device=device, **options)
            for target in [t for m, t in todo if m == model]:
                view, error = views[target], ""
                start = time.perf_counter()
                try:
                    value = score_prepared("lgc", prepared, view.images, view.labels, device=device, **options)
                except Exception as err:  # noqa: BLE001 - any failure is a NaN cell, reported
                    value, error = math.nan, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                seconds = time.perf_counter() - start
                cache.put(f"{model}|{target}", {"score": value if math.isfinite(value) else None,
                                                "seconds": seconds, "error": error, "weights": refs[model].weights})
                done += 1
                log(f"lgc {done}/{len(todo)}: {model} on {target} {seconds:.1f} s")
    cells = [[cache.get(f"{m}|{t}") for m in zoo.models] for t in zoo.targets]
    scores = np.array([[np.nan if c["score"] is None else c["score"] for c in row] for row in cells], dtype=np.float64)
    seconds = np.array([[c["seconds"] for c in row] for row in cells], dtype=np.float64)
    errors = [f"lgc on {m}/{t}: {c['error']}" for t, row in zip(zoo.targets, cells)
              for m, c in zip(zoo.models, row) if c["error"]]
    return scores, seconds, errors


def lgc_row(zoo: Zoo, scores: np.ndarray, seconds: np.ndarray):
    """The report's ``lgc`` row (a baseline row whose extraction is inside its score time)."""
    from spider.benchmark.methods import method_result

    per_target = seconds.sum(axis=1)
    return method_result("lgc", "baseline", zoo, [scores], seconds=per_target, extract_seconds=0.0,
                         score_seconds=per_target, ptm_passes=len(zoo.models), general_passes=0,
                         note=f"label-gradient correlation: per-sample gradients of the last "
                              f"<= {LGC_OPTIONS['max_params']:,} parameters of every PTM (forward and backward "
                              "passes inside the score time)")
