"""A label cache for another set of PTMs, derived from finished caches instead of rebuilt.

A task's raw baseline scores are computed model by model (:func:`spider.pipeline.labelling.score_task`
scores each PTM on its own), so the raw scores of a PTM on a task do not depend on which other
PTMs are in the zoo; only the aggregate (Copeland) does. :func:`derive_label_cache` therefore takes
the raw columns of every PTM it can find in ``sources`` (caches with the same label settings and
the same stored features of those PTMs), computes the baselines only for the PTMs none of them
holds, and recomputes the aggregate over the new model set. The result is the cache
:func:`~spider.pipeline.labelling.build_label_cache` would build from scratch (same shards, same
manifest: that function writes the manifest after checking every derived shard), at the cost of
the new PTMs only. Adding a PTM to a trained ranker (:mod:`spider.incremental`) uses it; so does
leave-one-PTM-out (a subset of a cache needs no computation at all).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spider.datamodules.label_cache import (LabelCacheError, LabelConfig, identity_hash, label_fingerprint,
                                            open_label_cache, read_manifest, shard_path)
from spider.datamodules.tasks import TaskSpec
from spider.pipeline.labelling import _run, _sampler, _save_shard, build_label_cache
from spider.progress import progress_bar

__all__ = ["DeriveReport", "derive_label_cache"]


@dataclass(frozen=True)
class DeriveReport:
    """``computed``: PTMs whose baselines were run; ``reused``: PTMs taken from a source cache
    (both empty when ``out`` already held the finished cache)."""

    out: Path
    computed: tuple[str, ...]
    reused: tuple[str, ...]
    seconds: float


def derive_label_cache(config: LabelConfig, out: str | os.PathLike, num_tasks: int,
                       sources: Sequence[str | os.PathLike] = (), *, workers: int = 1,
                       progress: bool = False) -> DeriveReport:
    """Make the label cache of ``config`` in ``out`` from the raw scores of ``sources``.

    A source is used when its settings equal ``config``'s except the model set, and the store
    entries it read for the PTMs taken from it are the ones ``config`` reads (same checksums);
    others are skipped (they are only a shortcut). PTMs no source holds are scored here
    (``workers`` processes).

    Raises:
        LabelCacheError: ``out`` holds a cache of other settings (as ``build_label_cache``).
    """
    started = time.perf_counter()
    root = Path(out)
    try:
        open_label_cache(root, num_tasks, config)
        return DeriveReport(root, (), (), time.perf_counter() - started)
    except LabelCacheError:
        pass
    identity = config.identity(label_fingerprint(config))
    expected = [spec.to_json() for spec in _sampler(config, num_tasks).tasks(0, range(num_tasks))]
    columns: dict[str, np.ndarray] = {}  # PTM -> raw [N, K]
    for source in sources:
        for model, raw in _usable_columns(Path(source), identity, config, num_tasks, expected).items():
            columns.setdefault(model, raw)
    missing = tuple(m for m in config.models if m not in columns)
    if missing:
        items = [(i, expected[i], None, config.split, missing, config.baselines) for i in range(num_tasks)]
        scored = np.full((num_tasks, len(config.baselines), len(missing)), np.nan)
        with progress_bar(num_tasks, f"labelling tasks for {len(missing)} new PTM(s)", progress) as advance:
            for index, raw, _ in _run(items, config.store, workers):
                scored[index] = raw
                advance()
        columns.update({m: scored[:, :, j] for j, m in enumerate(missing)})
    raw = np.stack([columns[m] for m in config.models], axis=2)  # [N, K, M]
    config_hash = identity_hash(identity)
    root.mkdir(parents=True, exist_ok=True)
    size = config.shard_size
    for k in range(math.ceil(num_tasks / size)):
        start, stop = k * size, min((k + 1) * size, num_tasks)
        specs = [TaskSpec.from_json(t) for t in expected[start:stop]]
        _save_shard(shard_path(root, k), config_hash, start, specs, raw[start:stop], config.aggregator)
    # Checks every shard against the settings and writes the manifest, as for a built cache.
    build_label_cache(config, root, num_tasks, workers=1, progress=False)
    reused = tuple(m for m in config.models if m not in missing)
    return DeriveReport(root, missing, reused, time.perf_counter() - started)


def _usable_columns(source: Path, identity: dict[str, Any], config: LabelConfig, num_tasks: int,
                    expected: list[str]) -> dict[str, np.ndarray]:
    """Raw columns [N, K] of the PTMs of ``config`` that ``source`` holds with the same inputs."""
    try:
        manifest = read_manifest(source)
        if manifest is None:
            return {}
        cache = open_label_cache(source, num_tasks)
    except LabelCacheError:
        return {}
    theirs = manifest["identity"]
    same = all(theirs.get(k) == v for k, v in identity.items() if k not in ("models", "store"))
    if not same or cache.spec_texts != expected or list(cache.baselines) != list(config.baselines):
        return {}
    mine_store, their_store = identity["store"], theirs.get("store") or {}
    general = [k for k in mine_store if k.startswith(f"{config.general_encoder}/")]
    if any(their_store.get(k) != mine_store[k] for k in general):
        return {}
    out = {}
    for j, model in enumerate(cache.models):
        if model not in config.models:
            continue
        keys = [k for k in mine_store if k.startswith(f"{model}/")]
        if keys and all(their_store.get(k) == mine_store[k] for k in keys):
            out[model] = cache.raw[:, :, j]
    return out
