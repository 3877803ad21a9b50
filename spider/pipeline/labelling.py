"""Build the label cache (``spider labels build``): baseline scores of a fixed bank of training tasks.

Why a fixed bank: a label costs one run of every configured baseline (LogME, LEEP, NCE, H-Score)
per PTM per task, far more than a training step. So the cache labels ``num_tasks`` tasks - task
``i`` is :meth:`TaskSampler.task` ``(0, i)`` - and training epochs draw (reshuffled, deterministic
by seed and epoch) from this bank. Growing ``num_tasks`` later extends the cache: the first tasks
are the same, so their shards are reused.

The format, the settings (:class:`LabelConfig`) and the reader live in
:mod:`spider.datamodules.label_cache`, which is all the datamodule needs; this module computes
(worker pool, shards, targets' scores). A new build reuses every valid shard and computes only the
missing ones; each task's numbers depend only on its spec and the store (baselines run
single-threaded), so a resumed build equals an uninterrupted one. A cache of an older format
version is rebuilt in place.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spider.datamodules.label_cache import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    LabelCacheError,
    LabelConfig,
    check_manifest,
    identity_hash,
    load_shard,
    one_line,
    open_store,
    read_manifest,
    shard_path,
    label_fingerprint,
    read_target_scores,
    shard_spec_texts,
    task_array,
    task_entries,
)
from spider.datamodules.tasks import ClassIndex, TaskSampler, TaskSpec, contiguous
from spider.errors import ConfigError, SpiderError
from spider.io import clean_temp_files, write_bytes_atomic, write_json_atomic
from spider.progress import progress_bar

__all__ = ["LABELLER", "BuildReport", "Labeller", "build_label_cache", "score_task", "target_baseline_scores"]


# ----------------------------------------------------------------------------------------- scoring


def _needs_logits(baselines: Sequence[str]) -> bool:
    from spider.baselines import get_baseline

    return any("source_logits" in get_baseline(b).needs for b in baselines)


def score_task(store: Any, spec: TaskSpec | None, models: Sequence[str], baselines: Sequence[str], *,
               dataset: str | None = None, split: str = "train", device: str | None = None
               ) -> tuple[np.ndarray, list[str]]:
    """Every baseline on every model for one task.

    Args:
        spec: the task; None scores the whole entry ``dataset``/``split`` (a target dataset).
        device: where the baselines compute (default CPU; e.g. ``"cuda"``).

    Returns:
        ``(raw [K, M] float64, warnings)``: NaN where a baseline failed; the warning texts raised.
    """
    from spider.baselines import score_models

    store = open_store(store)
    needs_logits = _needs_logits(baselines)
    if spec is None:
        labels = contiguous(store.entry(models[0], dataset, split).labels())
    else:
        labels = spec.labels()
    raw = np.full((len(baselines), len(models)), np.nan)
    caught: list[str] = []
    for m, model in enumerate(models):
        if spec is None:
            entry = store.entry(model, dataset, split)
            inputs = {"features": entry.features()}
            if needs_logits and entry.has_logits:
                inputs["source_logits"] = entry.logits()
        else:
            inputs = {"features": task_array(store, model, spec, "features")}
            if needs_logits and all(e.has_logits for e in task_entries(store, model, spec).values()):
                inputs["source_logits"] = task_array(store, model, spec, "logits")
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            scores = score_models(labels, {model: inputs}, list(baselines), device=device)
        raw[:, m] = np.asarray(scores, dtype=np.float64)[:, 0]
        caught += [str(w.message) for w in record]
    return raw, caught


# --------------------------------------------------------------------------------- worker pool

_WORKER: dict[str, Any] = {}


def _init_worker(store_root: str, device: str | None) -> None:
    import torch

    from spider._procs import exit_with_parent

    exit_with_parent()
    torch.set_num_threads(1)
    _WORKER["store"] = open_store(store_root)
    _WORKER["device"] = device


def _work(item: tuple) -> tuple[Any, np.ndarray, list[str]]:
    key, spec_json, dataset, split, models, baselines = item
    spec = TaskSpec.from_json(spec_json) if spec_json is not None else None
    raw, caught = score_task(_WORKER["store"], spec, models, baselines, dataset=dataset, split=split,
                             device=_WORKER["device"])
    return key, raw, caught


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _single_threaded_env() -> Iterator[None]:
    """Spawned workers inherit these: their BLAS runs single-threaded like the in-process path."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(items: list[tuple], store_root: str, workers: int,
         device: str | None = None) -> Iterator[tuple[Any, np.ndarray, list[str]]]:
    """Score ``items`` in order, in-process (workers <= 1) or in ``workers`` spawned processes."""
    import torch

    if workers <= 1 or len(items) <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same numerics as the worker processes
        try:
            store = open_store(store_root)
            for key, spec_json, dataset, split, models, baselines in items:
                spec = TaskSpec.from_json(spec_json) if spec_json is not None else None
                raw, caught = score_task(store, spec, models, baselines, dataset=dataset, split=split,
                                         device=device)
                yield key, raw, caught
        finally:
            torch.set_num_threads(threads)
        return
    # Spawned, not forked: forking after torch/BLAS started their threads can deadlock. An executor,
    # not a Pool: a worker that dies (e.g. a script without a __main__ guard) raises instead of hanging.
    context = multiprocessing.get_context("spawn")
    with _single_threaded_env():  # the executor starts its processes on demand, so for the whole run
        executor = ProcessPoolExecutor(min(workers, len(items)), mp_context=context, initializer=_init_worker,
                                       initargs=(store_root, device))
        try:
            yield from executor.map(_work, items)
        except BrokenProcessPool as err:
            raise SpiderError(f"label workers died ({err}); a script starting workers needs an "
                              "`if __name__ == '__main__':` guard (or use workers=1)") from None
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class BuildReport:
    """What a build did: tasks computed and reused, wall time, failed baseline scores."""

    num_tasks: int
    computed: int
    reused: int
    seconds: float
    failed_scores: int
    first_warning: str | None = None

    @property
    def tasks_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else math.nan


def _check_out_folder(root: Path) -> None:
    """``root`` must be a label-cache folder, an empty folder or a new path; checked before writing."""
    if root.exists() and not root.is_dir():
        raise LabelCacheError(f"{root}: exists and is not a folder (expected a label-cache folder)")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LabelCacheError(f"{root}: {parent} is not a folder")
            break
    if root.is_dir() and not (root / MANIFEST).is_file():
        # A cache writes its manifest first, so a folder without one holds only what a killed
        # build may leave (temp files, target scores); anything else is someone else's folder.
        foreign = sorted(p.name for p in root.iterdir() if not _is_cache_name(p.name))
        if foreign:
            raise LabelCacheError(f"{root}: not a label cache and not empty (holds {foreign[0]!r}); "
                                  "use a new or empty folder")


def _is_cache_name(name: str) -> bool:
    return name in (MANIFEST, "targets") or name.startswith(".") or \
        (name.startswith("shard-") and name.endswith(".npz"))


def _save_shard(path: Path, config_hash: str, start: int, specs: list[TaskSpec], raw: np.ndarray,
                aggregator: str) -> None:
    from spider.aggregate import get_aggregator

    agg = get_aggregator(aggregator)(raw)
    specs_json = "\n".join(s.to_json() for s in specs).encode()  # compact JSON has no newline
    arrays = {
        "config_hash": np.array(config_hash),
        "task_index": np.arange(start, start + len(specs), dtype=np.int64),
        "specs": np.frombuffer(specs_json, dtype=np.uint8),
        "raw": np.ascontiguousarray(raw, dtype=np.float64),
        "scores": np.asarray(agg.scores, dtype=np.float64),
        "ranking": np.asarray(agg.ranking, dtype=np.int64),
    }
    write_bytes_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def _sampler(config: LabelConfig, num_tasks: int) -> TaskSampler:
    store = open_store(config.store)
    index = ClassIndex.from_store(store, config.general_encoder, config.pool, config.split)
    return TaskSampler(index, list(config.pool), config=config.task, num_tasks=num_tasks, seed=config.seed)


def build_label_cache(config: LabelConfig, out: str | os.PathLike, num_tasks: int, *, workers: int = 1,
                      progress: bool = True, device: str | None = None,
                      shards: Sequence[int] | None = None) -> BuildReport:
    """Label tasks ``0..num_tasks-1`` into ``out``, reusing every valid shard already there.

    ``shards`` (shard indices) builds only those - one rank's share of a distributed build - and
    leaves the manifest alone (it is checked, not written): a later call without ``shards`` finds
    every shard built and writes it.

    ``workers`` > 1 runs spawned processes (a script calling this needs an ``if __name__ ==
    "__main__":`` guard). ``device`` is where the baselines compute (e.g. ``"cuda"``); it is not
    part of the settings hash, and results are bit-identical across runs on the same device kind.

    Raises:
        LabelCacheError: ``out`` holds a cache built with other settings.
    """
    if num_tasks < 1:
        raise ConfigError(f"num_tasks: expected >= 1, got {num_tasks}")
    started = time.perf_counter()
    root = Path(out)
    _check_out_folder(root)
    identity = config.identity(label_fingerprint(config))
    config_hash = identity_hash(identity)
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("version") != FORMAT_VERSION:
        manifest = None  # an older format: its shards' hashes differ, so every shard is rebuilt
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LabelCacheError(f"{root}: cannot create the label-cache folder ({one_line(err)})") from None
    if manifest is not None:
        check_manifest(root, manifest, identity, config_hash)
    clean_temp_files(root)
    owned = None if shards is None else set(shards)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "config_hash": config_hash, "identity": identity,
                "models": list(config.models), "baselines": list(config.baselines),
                "aggregator": config.aggregator, "shard_size": config.shard_size,
                "num_tasks": max(num_tasks, (manifest or {}).get("num_tasks", 0)),
                "complete_tasks": (manifest or {}).get("complete_tasks", 0)}
    if owned is None:
        write_json_atomic(root / MANIFEST, manifest, indent=1, sort_keys=True)

    sampler = _sampler(config, num_tasks)
    size = config.shard_size
    missing: list[int] = []
    reused = 0
    for k in range(math.ceil(num_tasks / size)):
        if owned is not None and k not in owned:
            continue
        start, stop = k * size, min((k + 1) * size, num_tasks)
        arrays = load_shard(shard_path(root, k), config_hash, stop - start)
        if arrays is None:
            missing.append(k)
            continue
        stored = shard_spec_texts(arrays)[: stop - start]
        if stored != [spec.to_json() for spec in sampler.tasks(0, range(start, stop))]:
            raise LabelCacheError(f"{shard_path(root, k)}: holds other tasks than this build samples "
                                  "(was numpy's random generator changed?); delete the cache folder")
        reused += stop - start

    failed, first_warning, computed = 0, None, 0
    items = []
    for k in missing:
        for i in range(k * size, min((k + 1) * size, num_tasks)):
            items.append((i, sampler.task(0, i).to_json(), None, config.split, config.models, config.baselines))
    with progress_bar(reused + len(items), "labelling tasks", progress, completed=reused) as advance:
        pending: dict[int, np.ndarray] = {}
        for index, raw, caught in _run(items, config.store, workers, device):
            pending[index] = raw
            failed += int(np.isnan(raw).sum())
            if caught and first_warning is None:
                first_warning = caught[0]
            computed += 1
            advance()
            k = index // size
            start, stop = k * size, min((k + 1) * size, num_tasks)
            if all(i in pending for i in range(start, stop)):
                specs = sampler.tasks(0, range(start, stop))
                raw_k = np.stack([pending.pop(i) for i in range(start, stop)])
                _save_shard(shard_path(root, k), config_hash, start, specs, raw_k, config.aggregator)
    if owned is None:
        manifest["complete_tasks"] = max(num_tasks, manifest["complete_tasks"])
        write_json_atomic(root / MANIFEST, manifest, indent=1, sort_keys=True)
    return BuildReport(num_tasks, computed, reused, time.perf_counter() - started, failed, first_warning)


# ----------------------------------------------------------------------------- target scores


def target_baseline_scores(store: Any, cache_dir: str | os.PathLike, tasks: Sequence[tuple[str, TaskSpec | None]],
                           models: Sequence[str], baselines: Sequence[str], aggregator: str = "copeland", *,
                           split: str = "train", workers: int = 1, progress: bool = False,
                           device: str | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and aggregate scores of evaluation tasks, computing (and caching under
    ``cache_dir/targets``) those :func:`~spider.datamodules.label_cache.read_target_scores` lacks.

    Args:
        tasks: ``(dataset, spec)`` per evaluation task; ``spec=None`` is the whole stored
            ``dataset``/``split`` (the usual target task).

    Returns:
        ``(raw [T, K, M] float64, aggregate [T, M] float64)``; NaN where a baseline failed.
    """
    from spider.aggregate import get_aggregator

    store = open_store(store)
    models, baselines = tuple(models), tuple(baselines)
    folder = Path(cache_dir) / "targets"
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp_files(folder)
    raw, missing = read_target_scores(store, cache_dir, tasks, models, baselines, split)
    todo = [((t, m), None if tasks[t][1] is None else tasks[t][1].to_json(), dataset, split, (model,), baselines)
            for dataset, (positions, _, _) in missing.items() for t in positions for m, model in enumerate(models)]
    if todo:
        left = {d: {(t, m) for (t, m), *_ in todo if tasks[t][0] == d} for d in missing}
        with progress_bar(len(todo), "scoring targets", progress) as advance:
            for (t, m), column, _ in _run(todo, str(store.root), workers, device):
                raw[t, :, m] = column[:, 0]
                advance()
                dataset = tasks[t][0]
                left[dataset].discard((t, m))
                if not left[dataset]:
                    positions, path, digest = missing[dataset]
                    block = raw[positions]
                    write_bytes_atomic(path, lambda f, b=block, h=digest: np.savez_compressed(
                        f, config_hash=np.array(h), raw=b))
    aggregate = np.asarray(get_aggregator(aggregator)(raw).scores, dtype=np.float64) if len(tasks) else \
        np.zeros((0, len(models)))
    return raw, aggregate


class Labeller:
    """What :class:`~spider.datamodules.episodes.EpisodeDataModule` calls to build missing labels
    (it reads finished ones itself, so it never imports this package)."""

    build_label_cache = staticmethod(build_label_cache)
    target_baseline_scores = staticmethod(target_baseline_scores)


LABELLER = Labeller()
