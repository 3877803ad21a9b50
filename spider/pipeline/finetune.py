"""Ground truth by fine-tuning: how well each PTM really transfers to each target dataset.

For every (target, PTM) the *whole* PTM is fine-tuned with a new linear head on the target's train
images, once per (learning rate, seed) of :class:`FinetuneConfig`. The learning rate with the best
validation accuracy (mean over seeds) is selected and the ground truth is the mean test accuracy
(%) over seeds at that rate. Each model keeps its native input size and normalisation
(:func:`spider.pipeline.extract.preprocess` converts grey/RGB and resizes).

Every finished run is cached as a small JSON file written atomically
(``<cache>/<target>/<model>/lr<lr>_seed<seed>.json``) holding a hash of everything that
determines it, so a killed build resumes where it stopped and a changed setting recomputes only
what it affects. Runs are spread over worker processes with one torch thread each (small
convolutions scale better over processes than over threads), and are bit-identical to a run in
the calling process.

Example:
    >>> jobs = [GroundTruthJob("usps", views, ref, epochs=2) for ref in refs]   # views: train/val/test
    >>> results = run_ground_truth(jobs, FinetuneConfig(), "gt_cache", workers=2)
    >>> table = summarize(results, FinetuneConfig())           # {(target, model): Summary}
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spider.errors import SpiderError
from spider.io import write_text_atomic, write_text_if_changed
from spider.progress import progress_bar
from spider.schedules import WarmupCosine


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning protocol shared by every (target, PTM) pair.

    ``lrs`` is the AdamW learning rate of the PTM's weights (the new head uses ``lr *
    head_lr_scale``), with linear warm-up over ``warmup_fraction`` of the steps then cosine decay.
    """

    lrs: tuple[float, ...] = (3e-3, 1e-3)
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 2
    batch_size: int = 16
    weight_decay: float = 1e-4
    head_lr_scale: float = 10.0
    warmup_fraction: float = 0.1
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if len(self.lrs) < 1 or len(self.seeds) < 1:
            raise SpiderError("finetune: needs at least one learning rate and one seed")
        if self.epochs < 1 or self.batch_size < 2:
            raise SpiderError(f"finetune: expected epochs >= 1 and batch_size >= 2, "
                              f"got {self.epochs} and {self.batch_size}")


@dataclass(frozen=True)
class GroundTruthJob:
    """All runs of one (target, PTM) pair.

    ``views`` maps ``"train"``, ``"val"``, ``"test"`` to objects with ``images`` (uint8 ``[N, H, W]``
    or ``[N, H, W, 3]``), ``labels`` (int ``[N]``) and ``class_names``; ``model`` has
    ``id``, ``load(data_dir) -> PreparedModel`` and ``to_dict()`` (a :class:`~spider.pipeline.recipe.ModelRef`).
    ``identity`` is any JSON-able description of the target's data (part of the cache hash).
    """

    target: str
    views: Any
    model: Any
    epochs: int | None = None
    identity: Any = None
    cost: float = 1.0  # relative cost, to schedule expensive jobs first


@dataclass(frozen=True)
class RunResult:
    target: str
    model: str
    lr: float
    seed: int
    val_accuracy: float  # %
    test_accuracy: float  # %
    train_loss: float
    seconds: float  # CPU seconds of this run (one thread)
    # Mean cross-entropy of the test rows: a continuous measure of the same run, with no ties
    # where the accuracy of a few test images has many (the bank's labels: spider.pipeline.bank).
    # NaN in a run cached before it was recorded.
    test_nll: float = math.nan
    cached: bool = False


@dataclass(frozen=True)
class Summary:
    """Ground truth of one (target, PTM): test accuracy (%) at the selected learning rate."""

    target: str
    model: str
    accuracy: float
    accuracy_std: float  # over seeds at the selected lr
    best_lr: float
    val_accuracy: float  # mean over seeds at the selected lr
    runs: int
    test_nll: float = math.nan  # mean over seeds at the selected lr


# --------------------------------------------------------------------------------- one run


def finetune(prepared, data: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, *,
             lr: float, seed: int, config: FinetuneConfig, epochs: int, order_seed: int = 0
             ) -> tuple[float, float, float, float]:
    """Fine-tune ``prepared`` (a :class:`spider.pipeline.extract.PreparedModel`, weights changed in place)
    with a new ``num_classes``-way head; returns (val accuracy %, test accuracy %, last-epoch loss,
    test mean cross-entropy).

    ``data[part] = (x float [N, C, H, W] preprocessed, y int64 [N])`` for train/val/test.
    ``seed`` draws the head and dropout; ``order_seed`` (with ``seed``) the batch order.
    """
    torch.manual_seed(seed)
    model = prepared.module
    x_train, y_train = data["train"]
    with torch.no_grad():
        dim = prepared.run(x_train[:2].clone())[0].shape[1]
    head = nn.Linear(dim, num_classes)
    params = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr},
              {"params": head.parameters(), "lr": lr * config.head_lr_scale}]
    optimizer = torch.optim.AdamW(params, weight_decay=config.weight_decay)
    n = len(y_train)
    batches = max(1, math.ceil(n / config.batch_size))
    if n >= 4:
        batches = min(batches, n // 2)  # no batch of one: BatchNorm needs two samples
    total = batches * epochs
    warmup = max(1, int(round(total * config.warmup_fraction)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    generator = np.random.default_rng([seed, order_seed])
    model.train()
    head.train()
    loss_value = float("nan")
    for _ in range(epochs):
        losses = []
        for rows in np.array_split(generator.permutation(n), batches):
            index = torch.from_numpy(rows)
            logits = head(prepared.run(x_train[index])[0])
            loss = F.cross_entropy(logits, y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        loss_value = float(np.mean(losses))
    model.eval()
    head.eval()
    val, _ = _evaluate(prepared, head, *data["val"], config.eval_batch_size)
    test, test_nll = _evaluate(prepared, head, *data["test"], config.eval_batch_size)
    return val, test, loss_value, test_nll


@torch.inference_mode()
def _evaluate(prepared, head: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy %, mean cross-entropy) of ``head`` on ``(x, y)``; NaN for no rows."""
    if len(y) == 0:
        return float("nan"), float("nan")
    correct, nll = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = head(prepared.run(x[start:start + batch_size])[0])
        labels = y[start:start + batch_size]
        correct += int((logits.argmax(1) == labels).sum())
        nll += float(F.cross_entropy(logits.double(), labels, reduction="sum"))
    return 100.0 * correct / len(y), nll / len(y)


# ------------------------------------------------------------------------------------ cache


def run_hash(job: GroundTruthJob, config: FinetuneConfig) -> str:
    """Hash of everything a run of ``job`` depends on except (lr, seed)."""
    # Left out: where the checkpoint lies (moving a build folder must keep its cache valid),
    # descriptive text (``ModelRef.weights`` identifies the weights themselves) and the protocol's
    # other learning rates and seeds (a run at (lr, seed) is the same run in a protocol with more
    # or fewer of them: zoos that share targets and PTMs share their runs).
    model = {k: v for k, v in job.model.to_dict().items() if k not in ("checkpoint", "provenance")}
    protocol = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("lrs", "seeds")}
    payload = {"config": protocol, "epochs": _epochs(job, config),
               "model": model, "target": job.target, "data": job.identity}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _epochs(job: GroundTruthJob, config: FinetuneConfig) -> int:
    return int(job.epochs if job.epochs is not None else config.epochs)


class RunCache:
    """One JSON file per finished run; a file whose hash differs from the job's is stale."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, target: str, model: str, lr: float, seed: int) -> Path:
        return self.root / target / model / f"lr{lr:g}_seed{seed}.json"

    def get(self, target: str, model: str, lr: float, seed: int, expected_hash: str) -> RunResult | None:
        try:
            data = json.loads(self.path(target, model, lr, seed).read_text())
        except (OSError, ValueError):
            return None
        if data.get("hash") != expected_hash:
            return None
        fields = {f.name: f for f in dataclasses.fields(RunResult) if f.name != "cached"}
        try:  # a field added later (test_nll) keeps its default in older files
            return RunResult(**{k: data[k] for k, f in fields.items() if k in data or f.default is dataclasses.MISSING},
                             cached=True)
        except (KeyError, TypeError):
            return None

    def put(self, result: RunResult, hash_: str) -> None:
        path = self.path(result.target, result.model, result.lr, result.seed)
        data = dict(dataclasses.asdict(result), hash=hash_)
        data.pop("cached")
        write_text_atomic(path, json.dumps(data, sort_keys=True))


# ------------------------------------------------------------------------------- scheduling


def _runs(config: FinetuneConfig) -> list[tuple[float, int]]:
    return [(lr, seed) for lr in config.lrs for seed in config.seeds]


def _tensors(job: GroundTruthJob, prepared) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from spider.pipeline.extract import preprocess

    out = {}
    for part in ("train", "val", "test"):
        view = job.views[part]
        y = torch.as_tensor(np.asarray(view.labels), dtype=torch.int64)
        # A list holds chunks of different image sizes (a task mixing datasets): each chunk is
        # preprocessed to the model's input on its own, rows in chunk order.
        chunks = view.images if isinstance(view.images, (list, tuple)) else [view.images]
        chunks = [preprocess(np.asarray(c), prepared) for c in chunks if len(c)]
        x = torch.cat(chunks) if chunks else out["train"][0][:0]
        out[part] = (x, y)
    return out


def run_job(job: GroundTruthJob, config: FinetuneConfig, cache_root: str | os.PathLike,
            data_dir: str | os.PathLike | None = None, todo: Sequence[tuple[float, int]] | None = None
            ) -> Iterator[RunResult]:
    """Compute the runs ``todo`` (default: all) of ``job``, caching each as soon as it finishes."""
    cache = RunCache(cache_root)
    hash_ = run_hash(job, config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in a worker and in this process
    try:
        prepared = job.model.load(data_dir)
        initial = {k: v.detach().clone() for k, v in prepared.module.state_dict().items()}
        data = _tensors(job, prepared)
        num_classes = len(job.views["train"].class_names)
        for lr, seed in (todo if todo is not None else _runs(config)):
            prepared.module.load_state_dict(initial)
            cpu = time.process_time()
            val, test, loss, nll = finetune(prepared, data, num_classes, lr=lr, seed=seed, config=config,
                                            epochs=_epochs(job, config), order_seed=zlib.crc32(job.target.encode()))
            result = RunResult(job.target, job.model.id, float(lr), int(seed), val, test, loss,
                               round(time.process_time() - cpu, 3), nll)
            cache.put(result, hash_)
            yield result
    finally:
        torch.set_num_threads(threads)


def _worker_init(jobs: list[GroundTruthJob], config: FinetuneConfig, cache_root: str, data_dir: str | None) -> None:
    global _WORKER
    from spider._procs import exit_with_parent

    exit_with_parent()
    torch.set_num_threads(1)
    _WORKER = (jobs, config, cache_root, data_dir)


def _worker_run(item: tuple[int, list[tuple[float, int]]]) -> list[RunResult]:
    jobs, config, cache_root, data_dir = _WORKER
    index, todo = item
    return list(run_job(jobs[index], config, cache_root, data_dir, todo))


_WORKER: tuple | None = None


def run_ground_truth(jobs: Sequence[GroundTruthJob], config: FinetuneConfig, cache_root: str | os.PathLike, *,
                     data_dir: str | os.PathLike | None = None, workers: int = 1, progress: bool = True
                     ) -> list[RunResult]:
    """Every run of every job: cached ones are read back, missing ones computed (``workers``
    processes; ``<= 1``: in this process). Results come back in job order, then (lr, seed) order.
    """
    cache = RunCache(cache_root)
    found: dict[tuple[int, float, int], RunResult] = {}
    pending: list[tuple[int, list[tuple[float, int]]]] = []
    for i, job in enumerate(jobs):
        hash_ = run_hash(job, config)
        todo = []
        for lr, seed in _runs(config):
            hit = cache.get(job.target, job.model.id, lr, seed, hash_)
            if hit is None:
                todo.append((lr, seed))
            else:
                found[(i, lr, seed)] = hit
        if todo:
            pending.append((i, todo))
    pending.sort(key=lambda item: -jobs[item[0]].cost * len(item[1]))
    total = sum(len(t) for _, t in pending)
    if total:
        position = {(job.target, job.model.id): i for i, job in enumerate(jobs)}
        with progress_bar(total, "ground truth (fine-tuning runs)", progress) as advance:
            for result in _compute(jobs, pending, config, cache_root, data_dir, workers):
                index = position[(result.target, result.model)]
                found[(index, result.lr, result.seed)] = result
                advance(1)
    return [found[(i, lr, seed)] for i in range(len(jobs)) for lr, seed in _runs(config)]


def _compute(jobs, pending, config, cache_root, data_dir, workers) -> Iterator[RunResult]:
    if workers <= 1 or len(pending) == 1:
        for index, todo in pending:
            yield from run_job(jobs[index], config, cache_root, data_dir, todo)
        return
    # spawn: a forked child of a process that already ran torch ops can deadlock in OpenMP.
    context = multiprocessing.get_context("spawn")
    init = (list(jobs), config, str(cache_root), None if data_dir is None else str(data_dir))
    with context.Pool(min(workers, len(pending)), initializer=_worker_init, initargs=init) as pool:
        for results in pool.imap_unordered(_worker_run, pending, chunksize=1):
            yield from results


# ---------------------------------------------------------------------------------- summary


def summarize(results: Sequence[RunResult], config: FinetuneConfig) -> dict[tuple[str, str], Summary]:
    """Select each pair's lr by mean validation accuracy over seeds (ties: the first lr of the
    grid) and report the mean test accuracy over seeds at that lr."""
    grouped: dict[tuple[str, str], dict[float, list[RunResult]]] = {}
    for r in results:
        grouped.setdefault((r.target, r.model), {}).setdefault(r.lr, []).append(r)
    out = {}
    for key, by_lr in grouped.items():
        order = [lr for lr in config.lrs if lr in by_lr] + [lr for lr in by_lr if lr not in config.lrs]
        val = {lr: float(np.mean([r.val_accuracy for r in by_lr[lr]])) for lr in order}
        best = max(order, key=lambda lr: (val[lr], -order.index(lr)))
        tests = [r.test_accuracy for r in by_lr[best]]
        out[key] = Summary(key[0], key[1], float(np.mean(tests)), float(np.std(tests)), best, val[best],
                           sum(len(v) for v in by_lr.values()), float(np.mean([r.test_nll for r in by_lr[best]])))
    return out


def write_tables(summaries: dict[tuple[str, str], Summary], targets: Sequence[str], models: Sequence[str],
                 csv_path: str | os.PathLike, details_path: str | os.PathLike | None = None,
                 in_domain: dict[str, Sequence[str]] | None = None, measure: str = "accuracy") -> bool:
    """Write the ground-truth CSV (``dataset,model,<measure>``: a :class:`Summary` field, e.g.
    ``accuracy`` or ``test_nll``) and optionally a details CSV (selected lr, std over seeds,
    validation accuracy, in-domain flag); rows in target then model order. Files are replaced
    atomically and only when their content changes; returns whether anything was written."""
    from spider.datamodules.ground_truth_csv import GroundTruth, write_ground_truth

    accuracy = np.full((len(targets), len(models)), np.nan)
    for i, t in enumerate(targets):
        for j, m in enumerate(models):
            if (t, m) in summaries:
                accuracy[i, j] = round(getattr(summaries[(t, m)], measure), 4)
    csv_path = Path(csv_path)
    truth = GroundTruth(list(targets), list(models), accuracy)
    # Render elsewhere first: an unchanged table must not touch the output folder at all.
    with tempfile.TemporaryDirectory() as scratch:
        rendered = write_ground_truth(Path(scratch) / csv_path.name, truth, measure).read_bytes()
    changed = not csv_path.is_file() or csv_path.read_bytes() != rendered
    if changed:
        write_ground_truth(csv_path, truth, measure)
    if details_path is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["dataset", "model", "accuracy", "accuracy_std", "best_lr", "val_accuracy", "runs",
                         "in_domain"])
        domain = in_domain or {}
        for t in targets:
            for m in models:
                s = summaries.get((t, m))
                if s is not None:
                    writer.writerow([t, m, f"{s.accuracy:.4f}", f"{s.accuracy_std:.4f}", f"{s.best_lr:g}",
                                     f"{s.val_accuracy:.4f}", s.runs, int(m in domain.get(t, ()))])
        changed |= write_text_if_changed(details_path, buffer.getvalue())
    return changed


