"""Build a zoo from its recipe: pre-train -> extract features -> ground truth -> label cache.

``python -m spider.zoo build minizoo`` runs :func:`build_zoo`. Every stage builds only what is
missing (checkpoints with an up-to-date ``config.json``, store entries with a manifest, cached
fine-tuning runs, label-cache shards), so the command resumes a killed build and does nothing on
a finished one. The real data is read from ``SPIDER_DATA_DIR`` (default ``../shared/data``);
when files are missing the build stops before any work with one line naming them.

Output folder (default ``artifacts/<recipe>``)::

    checkpoints/<ptm>/model.pth, config.json   timm models pre-trained here
    store/<model>/<dataset>/train/             feature store: every PTM and ``general``
    alternatives/<name>/store/                 another general encoder as ``general``, PTM
                                               folders linked to ../../../store (ablations)
    ground_truth/runs/<target>/<ptm>/*.json    one cached fine-tuning run each
    ground_truth.csv                           dataset,model,accuracy (test %, selected lr)
    ground_truth_details.csv                   + std over seeds, selected lr, val acc, in-domain
    labels/                                    label cache of training tasks (spider.labels)
    zoo.json                                   what was built: models, pool, targets, settings

Python::

    report = build_zoo("minizoo")              # BuildReport; report.paths["store"] etc.

Under ``torchrun`` or ``srun`` every stage is shared out over the ranks, rank 0 writing what is
global (:mod:`spider.pipeline.distributed`); the files are those of a one-process build.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spider.datamodules.label_cache import LabelCacheError, open_label_cache, resolve_label_config
from spider.errors import SpiderError
from spider.zoo.manifest import DataFileError, MANIFEST_NAME, resolve_data_dir
from spider.pipeline.recipe import GENERAL_ID, ModelRef, ZooRecipe, timm_ref
from spider.pipeline.recipes import get_recipe
from spider.pipeline.pretrain import PretrainSpec, is_pretrained, pretrain
from spider.pipeline.build_manifest import MANIFEST, SPLIT, label_models, write_manifest, zoo_manifest
from spider.pipeline.labelling import build_label_cache
from spider.pipeline.distributed import DistContext, distributed
from spider.progress import progress_bar

STAGES = ("pretrain", "extract", "groundtruth", "labels", "bank")


@dataclass
class StageReport:
    name: str
    computed: int = 0  # items built in this call
    reused: int = 0  # items found already built
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process and its finished workers
    note: str = ""  # about the items this process built (rank 0's in a distributed build)


@dataclass
class BuildReport:
    recipe: str
    out: Path
    stages: list[StageReport] = field(default_factory=list)  # counts and cpu s: summed over ranks
    paths: dict[str, str] = field(default_factory=dict)
    rank: int = 0  # of this process in a distributed build
    ranks: int = 1
    built_here: int = 0  # items this process built (its share of ``computed``)

    @property
    def computed(self) -> int:
        return sum(s.computed for s in self.stages)

    def table(self) -> str:
        lines = [f"{'stage':<12} {'built':>6} {'reused':>6} {'wall s':>8} {'cpu s':>8}  note"]
        for s in self.stages:
            lines.append(f"{s.name:<12} {s.computed:>6} {s.reused:>6} {s.wall_seconds:>8.1f} "
                         f"{s.cpu_seconds:>8.1f}  {s.note}")
        return "\n".join(lines)


def default_out(recipe: str) -> Path:
    return Path("artifacts") / recipe


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- data check


def required_files(recipe: ZooRecipe) -> list[str]:
    """Files of the shared data folder the recipe reads (relative paths as in ``MANIFEST.md``)."""
    from spider.zoo import get_zoo_model_info
    from spider.zoo.datasets import DATASETS

    names = {p.source for p in recipe.pool} | {t.source for t in recipe.all_targets}
    names |= {s for spec in recipe.all_pretrain_specs() for s in spec.sources}
    files = {DATASETS.get(n).file for n in names} - {None}
    files |= {get_zoo_model_info(n).checkpoint for n in recipe.real_ptms}
    return sorted(files) + [MANIFEST_NAME]


def check_data(recipe: ZooRecipe, data_dir: str | Path | None = None) -> Path:
    """The data folder, or :class:`DataFileError` (one line) naming every missing file."""
    root = resolve_data_dir(data_dir)
    missing = [f for f in required_files(recipe) if not (root / f).is_file()]
    if missing:
        raise DataFileError(
            f"missing {len(missing)} data file(s) in {root}: {', '.join(missing)} - set SPIDER_DATA_DIR to the "
            f"shared data folder; its {MANIFEST_NAME} describes where each file comes from"
        )
    return root


# ---------------------------------------------------------------------------------- stages


class _Timer:
    def __init__(self, report: StageReport) -> None:
        self.report = report

    def __enter__(self) -> StageReport:
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()
        return self.report

    def __exit__(self, *exc) -> None:
        self.report.wall_seconds = time.perf_counter() - self.wall
        self.report.cpu_seconds = _cpu_seconds() - self.cpu


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _pool(workers: int, count: int):
    # spawn: forked children of a process that already ran torch ops can deadlock in OpenMP.
    return multiprocessing.get_context("spawn").Pool(min(workers, count), initializer=_single_thread)


def _single_thread() -> None:
    """Initializer of every worker pool here: one thread, and exit when the build is killed."""
    import torch

    from spider._procs import exit_with_parent

    exit_with_parent()
    torch.set_num_threads(1)


def _pretrain_one(args: tuple[PretrainSpec, str, str | None]):
    spec, out, data_dir = args
    return pretrain(spec, out, data_dir=data_dir, progress=False, threads=1)


_ONE = DistContext()  # a one-process build


def stage_pretrain(recipe: ZooRecipe, out: Path, data_dir, workers: int, progress: bool,
                   dist: DistContext = _ONE) -> StageReport:
    report = StageReport("pretrain")
    with _Timer(report):
        checkpoints = out / "checkpoints"
        specs = dist.shard(recipe.all_pretrain_specs())
        todo = [s for s in specs if not is_pretrained(checkpoints, s)]
        report.reused = len(specs) - len(todo)
        if todo:
            jobs = [(s, str(checkpoints), None if data_dir is None else str(data_dir)) for s in todo]
            notes = []
            with progress_bar(len(todo), "pretrain timm models", progress) as advance:
                if workers <= 1 or len(todo) == 1:
                    results = map(_pretrain_one, jobs)
                    pool = None
                else:
                    pool = _pool(workers, len(todo))
                    results = pool.imap_unordered(_pretrain_one, jobs, chunksize=1)
                try:
                    for result in results:
                        report.computed += 1
                        acc = "-" if result.holdout_accuracy is None else f"{result.holdout_accuracy:.1f}%"
                        notes.append(f"{result.spec.id} {acc} {result.cpu_seconds:.0f}s")
                        advance(1)
                finally:
                    if pool is not None:
                        pool.close()
                        pool.join()
            report.note = "; ".join(notes)
    return report


@dataclass(frozen=True)
class _ExtractTask:
    ref: ModelRef
    store: str
    model_id: str
    datasets: tuple[str, ...]


_VIEW_SPECS: dict[str, Any] = {}
_VIEWS: dict[str, Any] = {}


def _view(dataset: str, data_dir) -> Any:
    """The stored (train) view of a pool or target dataset, loaded once per process."""
    if dataset not in _VIEWS:
        spec = _VIEW_SPECS[dataset]
        view = spec.load(data_dir)
        _VIEWS[dataset] = view["train"] if isinstance(view, dict) else view
    return _VIEWS[dataset]


def _extract_init(view_specs: dict[str, Any]) -> None:
    _single_thread()
    _VIEW_SPECS.clear()
    _VIEW_SPECS.update(view_specs)
    _VIEWS.clear()


def _extract_one(args: tuple[_ExtractTask, str | None, int, str | None]) -> list[tuple[str, bool]]:
    from spider.pipeline.extract import extract_to_store
    from spider.store import FeatureStore

    task, data_dir, batch_size, device = args
    store = FeatureStore(task.store)
    prepared = task.ref.load(data_dir)
    done = []
    for dataset in task.datasets:
        _, skipped = extract_to_store(store, prepared, _view(dataset, data_dir).source(), dataset=dataset,
                                      split=SPLIT, model_id=task.model_id, batch_size=batch_size,
                                      device=device, progress=False)
        done.append((dataset, skipped))
    return done


def _alternative_store(out: Path, name: str) -> Path:
    return out / "alternatives" / name / "store"


def extract_tasks(recipe: ZooRecipe, out: Path, dist: DistContext = _ONE) -> tuple[list[_ExtractTask], int]:
    """Models (of this rank's share) with missing store entries (and their missing datasets);
    count of their entries present."""
    from spider.store import FeatureStore

    checkpoints = out / "checkpoints"
    datasets = [p.id for p in recipe.pool] + [t.id for t in recipe.all_targets]
    wanted = [(ref, out / "store", ref.id) for ref in recipe.ptm_refs(checkpoints)]
    wanted.append((recipe.general_ref(checkpoints), out / "store", GENERAL_ID))
    for name, spec in recipe.general_alternatives:
        wanted.append((timm_ref(spec, checkpoints, GENERAL_ID), _alternative_store(out, name), GENERAL_ID))
    tasks, present = [], 0
    for ref, root, model_id in dist.shard(wanted):
        store = FeatureStore(root)
        missing = tuple(d for d in datasets if not store.has(model_id, d, SPLIT))
        present += len(datasets) - len(missing)
        if missing:
            tasks.append(_ExtractTask(ref, str(root), model_id, missing))
    return tasks, present


def stage_extract(recipe: ZooRecipe, out: Path, data_dir, workers: int, progress: bool,
                  dist: DistContext = _ONE) -> StageReport:
    report = StageReport("extract")
    with _Timer(report):
        tasks, report.reused = extract_tasks(recipe, out, dist)
        view_specs = {p.id: p for p in recipe.pool} | {t.id: t for t in recipe.all_targets}
        total = sum(len(t.datasets) for t in tasks)
        if total:
            jobs = [(t, None if data_dir is None else str(data_dir), recipe.extract_batch_size, dist.device)
                    for t in tasks]
            with progress_bar(total, "extract features", progress) as advance:
                if workers <= 1 or len(tasks) == 1:
                    _extract_init(view_specs)
                    results, pool = map(_extract_one, jobs), None
                else:
                    pool = multiprocessing.get_context("spawn").Pool(
                        min(workers, len(tasks)), initializer=_extract_init, initargs=(view_specs,))
                    results = pool.imap_unordered(_extract_one, jobs, chunksize=1)
                try:
                    for done in results:
                        report.computed += sum(not skipped for _, skipped in done)
                        report.reused += sum(skipped for _, skipped in done)
                        advance(len(done))
                finally:
                    if pool is not None:
                        pool.close()
                        pool.join()
        if dist.is_main:
            _link_alternatives(recipe, out)
    return report


def _link_alternatives(recipe: ZooRecipe, out: Path) -> None:
    """Each alternative store sees the main store's PTM folders through relative symlinks."""
    for name, _ in recipe.general_alternatives:
        root = _alternative_store(out, name)
        root.mkdir(parents=True, exist_ok=True)
        for ptm in recipe.ptm_ids():
            link = root / ptm
            target = Path("..") / ".." / ".." / "store" / ptm
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)


def ground_truth_jobs(recipe: ZooRecipe, out: Path):
    """One job per (target, PTM), without images (:func:`_finetune_runs` loads those that are needed)."""
    from spider.pipeline.finetune import GroundTruthJob

    refs = recipe.ptm_refs(out / "checkpoints")
    cost = {r.id: (4.0 if r.kind == "zoo" else 1.0) for r in refs}  # the real PTMs are the heavy ones
    identity = {t.id: {k: v for k, v in dataclasses.asdict(t).items() if k not in ("note", "in_domain")}
                for t in recipe.all_targets}
    return [GroundTruthJob(t.id, None, ref, epochs=t.epochs, identity=identity[t.id], cost=cost[ref.id])
            for t in recipe.all_targets for ref in refs]


def _missing_runs(jobs: Sequence[Any], config, cache_root: Path) -> list[Any]:
    """The jobs (ground truth or bank) with a run not in the cache ``cache_root`` yet."""
    from spider.pipeline.finetune import RunCache, run_hash

    cache, missing = RunCache(cache_root), []
    for job in jobs:
        h = run_hash(job, config)
        if any(cache.get(job.target, job.model.id, lr, s, h) is None for lr in config.lrs for s in config.seeds):
            missing.append(job)
    return missing


def _finetune_runs(jobs: Sequence[Any], config, cache_root: Path, views_for: Callable[[set[str]], dict[str, Any]],
                   data_dir, workers: int, progress: bool, dist: DistContext) -> tuple[list, list]:
    """(every run of ``jobs`` on the main rank - None elsewhere -, the runs of this rank's share).

    Each rank computes the missing runs of its share (``views_for(targets)`` loads the images of
    the targets that need some); after the barrier rank 0 reads every run back from the cache.
    """
    from spider.pipeline.finetune import run_ground_truth

    def run(share: Sequence[Any], show: bool) -> list:
        need = {j.target for j in _missing_runs(share, config, cache_root)}
        views = views_for(need) if need else {}
        share = [dataclasses.replace(j, views=views[j.target]) if j.target in need else j for j in share]
        return run_ground_truth(share, config, cache_root, data_dir=data_dir, workers=workers, progress=show)

    if not dist.active:
        results = run(jobs, progress)
        return results, results
    own = run(dist.shard(jobs, cost=lambda j: j.cost), progress)
    dist.barrier()
    # Everything is cached now (a run a rank missed would be computed here, not left out).
    return (run(jobs, False) if dist.is_main else None), own


def _count(report: StageReport, results: Sequence[Any]) -> None:
    report.computed = sum(not r.cached for r in results)
    report.reused = sum(r.cached for r in results)
    if report.computed:
        report.note = f"{sum(r.seconds for r in results if not r.cached) / report.computed:.1f} cpu s/run"


def stage_groundtruth(recipe: ZooRecipe, out: Path, data_dir, workers: int, progress: bool,
                      dist: DistContext = _ONE) -> StageReport:
    from spider.pipeline.finetune import summarize, write_tables

    report = StageReport("groundtruth")
    with _Timer(report):
        config = recipe.finetune

        def views_for(targets: set[str]) -> dict[str, Any]:
            return {t.id: t.load(data_dir) for t in recipe.all_targets if t.id in targets}

        results, own = _finetune_runs(ground_truth_jobs(recipe, out), config, out / "ground_truth" / "runs",
                                      views_for, data_dir, workers, progress, dist)
        _count(report, own)
        if results is not None:
            in_domain = {t.id: t.in_domain for t in recipe.all_targets}
            write_tables(summarize(results, config), [t.id for t in recipe.all_targets], recipe.ptm_ids(),
                         out / "ground_truth.csv", out / "ground_truth_details.csv", in_domain)
    return report


def _label_config(recipe: ZooRecipe, out: Path):
    settings = recipe.labels
    return resolve_label_config(
        out / "store", general_encoder=GENERAL_ID, models=label_models(recipe), pool=[p.id for p in recipe.pool],
        targets=[t.id for t in recipe.all_targets], split=SPLIT, task=settings.task, seed=settings.seed,
        baselines=list(settings.baselines), aggregator=settings.aggregator, shard_size=settings.shard_size)


def stage_labels(recipe: ZooRecipe, out: Path, workers: int, progress: bool, dist: DistContext = _ONE) -> StageReport:
    report = StageReport("labels")
    with _Timer(report):
        settings, config = recipe.labels, _label_config(recipe, out)
        try:  # a complete cache is left untouched (building would rewrite its manifest)
            open_label_cache(out / "labels", settings.num_label_tasks, config=config)
            complete = True
        except LabelCacheError:
            complete = False
        # Every rank takes the same branch: one that saw the cache incomplete builds its share.
        if dist.sum([not complete])[0] == 0:
            report.reused = settings.num_label_tasks if dist.is_main else 0
            return report
        if not dist.active:
            result = build_label_cache(config, out / "labels", settings.num_label_tasks, workers=workers,
                                       progress=progress)
        else:
            shards = range(-(-settings.num_label_tasks // settings.shard_size))
            result = build_label_cache(config, out / "labels", settings.num_label_tasks, workers=workers,
                                       progress=progress, shards=dist.shard(shards))
            dist.barrier()
            if dist.is_main:  # every shard is there: checks them and writes the manifest
                build_label_cache(config, out / "labels", settings.num_label_tasks, progress=False)
        report.computed, report.reused = result.computed, result.reused
    return report


def _bank_specs(recipe: ZooRecipe, out: Path) -> list:
    """The first ``recipe.bank.num_tasks`` task specs of the zoo's label cache."""
    if recipe.bank.num_tasks == 0:
        return []
    if recipe.bank.num_tasks > recipe.labels.num_label_tasks:
        raise SpiderError(f"recipe {recipe.name!r}: bank.num_tasks {recipe.bank.num_tasks} exceeds the "
                          f"{recipe.labels.num_label_tasks} label tasks it is drawn from")
    return open_label_cache(out / "labels", recipe.labels.num_label_tasks).specs[:recipe.bank.num_tasks]


def stage_bank(recipe: ZooRecipe, out: Path, data_dir, workers: int, progress: bool,
               dist: DistContext = _ONE) -> StageReport:
    """Fine-tune every PTM on the bank's pool tasks (:mod:`spider.pipeline.bank`); needs the labels."""
    from spider.datamodules.finetune_bank import BANK_MEASURES
    from spider.pipeline.bank import bank_jobs, split_task, task_id, write_specs
    from spider.pipeline.finetune import summarize, write_tables

    report = StageReport("bank")
    with _Timer(report):
        specs = _bank_specs(recipe, out)
        if not specs:
            report.note = "no bank tasks"
            return report
        settings, root = recipe.bank, out / "bank"

        def views_for(tasks: set[str]) -> dict[str, Any]:
            pool = {p.id: p.load(data_dir) for p in recipe.pool}
            return {task_id(i): split_task(spec, pool, i, settings) for i, spec in enumerate(specs)
                    if task_id(i) in tasks}

        results, own = _finetune_runs(bank_jobs(specs, recipe.ptm_refs(out / "checkpoints"), settings),
                                      settings.finetune, root / "runs", views_for, data_dir, workers, progress,
                                      dist)
        _count(report, own)
        if results is not None:
            write_specs(root / "tasks.jsonl", specs)
            summaries, tasks = summarize(results, settings.finetune), [task_id(i) for i in range(len(specs))]
            for measure in BANK_MEASURES:
                write_tables(summaries, tasks, recipe.ptm_ids(), root / f"{measure}.csv", measure=measure)
    return report


# ---------------------------------------------------------------------------------- driver


def build_zoo(recipe: ZooRecipe | str = "minizoo", out: str | Path | None = None, *,
              data_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
              stages: Sequence[str] = STAGES, log=print) -> BuildReport:
    """Build (or complete) the zoo of ``recipe`` in ``out``; see the module docstring.

    Under ``torchrun``/``srun`` (:func:`spider.pipeline.distributed.detect`) this process builds its
    rank's share with ``workers`` local processes; the returned report counts every rank's work.

    Raises:
        DataFileError: a data file the missing parts need is absent (one line naming all of them).
        SpiderError: bad recipe, stage name or inconsistent existing output.
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SpiderError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    out = (Path(out) if out is not None else default_out(recipe.name)).resolve()
    workers = default_workers() if workers is None else int(workers)
    if recipe.max_workers is not None:
        workers = min(workers, recipe.max_workers)
    with distributed() as dist:
        return _build(recipe, out, data_dir, workers, progress and dist.is_main, stages, log, dist)


def _build(recipe: ZooRecipe, out: Path, data_dir, workers: int, progress: bool, stages: Sequence[str], log,
           dist: DistContext) -> BuildReport:
    report = BuildReport(recipe.name, out, rank=dist.rank, ranks=dist.world)
    if _needs_data(recipe, out, stages):
        data_dir = check_data(recipe, data_dir)
        # The first stage can run for minutes before its progress bar moves: say what is going on.
        if dist.is_main:
            where = f"{workers} worker(s)" + (f" in each of {dist.world} ranks ({dist.launcher})"
                                              if dist.active else "")
            log(f"zoo {recipe.name}: building the missing parts in {out} (stages {', '.join(stages)}; "
                f"{where}; interrupt and re-run to resume)")
    out.mkdir(parents=True, exist_ok=True)
    # Stage N+1 reads what every rank built in stage N: a barrier after each.
    for name in STAGES:
        if name not in stages:
            continue
        if name == "labels":
            stage = stage_labels(recipe, out, workers, progress, dist)
        else:
            run = {"pretrain": stage_pretrain, "extract": stage_extract, "groundtruth": stage_groundtruth,
                   "bank": stage_bank}[name]
            stage = run(recipe, out, data_dir, workers, progress, dist)
        report.stages.append(stage)
        dist.barrier()
    report.built_here = report.computed
    for stage in report.stages:  # the whole build's counts (every rank runs the same stages)
        computed, reused, cpu = dist.sum([stage.computed, stage.reused, stage.cpu_seconds])
        stage.computed, stage.reused, stage.cpu_seconds = int(computed), int(reused), cpu
    if dist.is_main:
        write_manifest(out, zoo_manifest(recipe, out), report)
    report.paths = {"out": str(out), "store": str(out / "store"), "ground_truth": str(out / "ground_truth.csv"),
                    "label_cache": str(out / "labels"), "manifest": str(out / MANIFEST)}
    return report


def _needs_data(recipe: ZooRecipe, out: Path, stages: Sequence[str]) -> bool:
    """Whether any requested stage still has work that reads the shared data folder."""
    if "pretrain" in stages and not all(is_pretrained(out / "checkpoints", s) for s in recipe.all_pretrain_specs()):
        return True
    if "extract" in stages and extract_tasks(recipe, out)[0]:
        return True
    if "groundtruth" in stages:
        if _missing_runs(ground_truth_jobs(recipe, out), recipe.finetune, out / "ground_truth" / "runs"):
            return True
    if "bank" in stages and recipe.bank.num_tasks:
        from spider.pipeline.bank import bank_jobs

        try:
            specs = _bank_specs(recipe, out)
        except LabelCacheError:
            return True  # labels come first; the bank then reads pool images
        jobs = bank_jobs(specs, recipe.ptm_refs(out / "checkpoints"), recipe.bank)
        if _missing_runs(jobs, recipe.bank.finetune, out / "bank" / "runs"):
            return True
    return False
