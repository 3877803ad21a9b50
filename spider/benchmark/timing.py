"""Seconds to extract every model's features of every target (model loading excluded).

The zoo build does not record per-target extraction time, so it is re-timed here on the target's
stored images (one warm-up batch first), and the re-extracted features are checked against the
stored ones (``max_rel_diff``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from spider.benchmark.inputs import JsonCache, Zoo

__all__ = ["model_refs", "time_extraction"]


def model_refs(zoo: Zoo) -> dict[str, Any]:
    """``{store model id: ModelRef}`` of every PTM and the general encoder."""
    checkpoints = zoo.root / "checkpoints"
    refs = {r.id: r for r in zoo.recipe.ptm_refs(checkpoints)}
    refs[zoo.general] = zoo.recipe.general_ref(checkpoints)
    return refs


def time_extraction(zoo: Zoo, cache: JsonCache, log: Callable[[str], None] = lambda _: None
                    ) -> dict[str, dict[str, float]]:
    """``{model: {target: seconds}}`` for every PTM and the general encoder on every target
    (cached per ``model|target`` with ``max_rel_diff`` and the image count)."""
    from spider.pipeline.extract import ArraySource, extract

    refs = model_refs(zoo)
    todo = [(m, t) for m in refs for t in zoo.targets if cache.get(f"{m}|{t}") is None]
    if todo:
        recipe_targets = {t.id: t for t in zoo.recipe.all_targets}
        views = {t: recipe_targets[t].load(zoo.data_dir)["train"] for t in {t for _, t in todo}}
        batch = zoo.recipe.extract_batch_size
        done = 0
        for model in dict.fromkeys(m for m, _ in todo):
            prepared = refs[model].load(zoo.data_dir)
            for target in [t for m, t in todo if m == model]:
                view = views[target]
                warm = ArraySource(view.images[:8], view.labels[:8], view.class_names, view.sample_ids[:8])
                extract(prepared, warm, batch_size=batch, device="cpu", progress=False)
                start = time.perf_counter()
                out = extract(prepared, view.source(), batch_size=batch, device="cpu", progress=False)
                seconds = time.perf_counter() - start
                stored = zoo.store.entry(model, target).features().astype(np.float32)
                diff = float(np.abs(out.features - stored).max() / (np.abs(stored).max() + 1e-6))
                cache.put(f"{model}|{target}", {"seconds": seconds, "max_rel_diff": diff, "images": len(view)})
                done += 1
                log(f"extraction timing {done}/{len(todo)}: {model} on {target} {seconds:.2f} s")
    return {m: {t: cache.get(f"{m}|{t}")["seconds"] for t in zoo.targets} for m in refs}
