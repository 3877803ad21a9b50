"""Benchmark report of a built zoo: baselines vs Model Spider, costs, figures and ablations.

One command::

    python experiments/minizoo/report.py [--zoo-dir artifacts/minizoo] [--out experiments/minizoo] [--quick]

reads a zoo built by ``python -m spider.zoo build <recipe>`` and writes into ``--out``:

* ``report.md``     tables per target and on average (weighted tau under both protocols, top-1
                    regret) for every baseline, their Copeland aggregate, Model Spider with general
                    tokens and with re-ranking of the top k = 1, 3, 5; the time and PTM forward
                    passes each method needs; ablations; the goal check; command, commit, machine.
* ``results.json``  every number of the report (and the raw per-target values).
* ``efficiency.png``     mean weighted tau against selection time (paper Figure 1c).
* ``spider_charts.png``  what the learned model tokens say each PTM is good at (paper Sec. 5.4).

Costs. A forward-based method (every baseline, the aggregate) needs the features of all M PTMs on
the target, so its time is M feature extractions plus its scoring. Model Spider needs one
general-encoder extraction plus a forward of the scorer; re-ranking with k PTMs adds k
extractions and one more scorer forward. Extraction is re-timed here (model loading excluded, one
warm-up batch first) on the target's stored images - the zoo build does not record it - and the
re-extracted features are checked against the stored ones.

Intermediate results live in ``--work-dir`` (default ``artifacts/<zoo folder>-report``): a copy
of the zoo's label cache, trained scorers, timing and baseline caches. Every stage reuses what is
there, so a killed run resumes and a second run only re-renders (``--fresh`` starts over).
``--quick`` shrinks training and ablations to a smoke run (tests use it on the ``tiny`` recipe).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spider.errors import SpiderError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

DEFAULT_BASELINES = ("logme", "leep", "nce", "hscore")  # the paper's label baselines (Copeland of these)
EXTRA_BASELINES = ("transrate", "gbc", "sfda", "lfc", "nleep", "pactran_dir")  # hscore_reg: regression only
PROTOCOLS = {"wtau_paper": None, "wtau_symmetric": True}  # name -> scipy weightedtau ``rank``
METRICS = ("wtau_paper", "wtau_symmetric", "top1_regret")
RERANK_KS = (1, 3, 5)
SPIDER = "model_spider"  # method name prefix of the learned rankers
AGGREGATE = "copeland"
AGGREGATE_ALL = "copeland (all baselines)"  # a wider aggregate, shown for comparison only


class ReportError(SpiderError):
    """The report cannot be built from the given zoo (missing parts, bad arguments)."""


# ------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Budget:
    """How much training and evaluation the report does (full run vs ``--quick``).

    ``epochs * tasks_per_epoch`` training episodes for every scorer; ``seeds`` scorers per
    setting (tables show their mean); ``ablation_tasks`` label-bank sizes compared at the same
    number of episodes; ``chart_tasks`` sampled tasks per dataset for the spider charts.
    """

    epochs: int = 20
    tasks_per_epoch: int = 256
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    ablation_tasks: tuple[int, ...] = (64, 256, 1024)
    ablation_losses: tuple[str, ...] = ("listwise", "listnet", "mse")
    specific_models: int = 3
    chart_tasks: int = 16
    baselines: tuple[str, ...] = DEFAULT_BASELINES + EXTRA_BASELINES
    label_workers: int = 2  # processes labelling tasks a bank larger than the zoo's needs


QUICK = Budget(epochs=2, tasks_per_epoch=8, batch_size=4, seeds=(0,), ablation_seeds=(0,), ablation_tasks=(2, 8),
               ablation_losses=("listwise", "listnet", "mse"), specific_models=2, chart_tasks=2,
               baselines=DEFAULT_BASELINES + ("transrate", "gbc", "sfda", "lfc"), label_workers=1)

# Scorer settings shared by every run (configs/model/*.yaml values, stated here so that the
# report does not change when a default elsewhere does).
SCORER = dict(dim=64, depth=1, heads=4, mlp_ratio=2.0, dropout=0.1, lr=1e-3, weight_decay=1e-4)


# ------------------------------------------------------------------------------------ the zoo


@dataclass
class Zoo:
    """A built zoo: manifest, recipe, store, ground truth (``truth`` [T, M] accuracy %)."""

    root: Path
    manifest: dict[str, Any]
    recipe: Any
    store: Any
    models: list[str]
    targets: list[str]
    general: str
    truth: np.ndarray
    data_dir: Path | None

    @property
    def name(self) -> str:
        return str(self.manifest["recipe"])


def open_zoo(root: str | Path, data_dir: str | Path | None = None) -> Zoo:
    """Read ``zoo.json``, the store and the ground truth of a built zoo (ReportError if incomplete)."""
    from spider.datamodules.ground_truth_csv import read_ground_truth
    from spider.store import FeatureStore
    from spider.pipeline.build_manifest import read_manifest
    from spider.pipeline.recipes import get_recipe

    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"--zoo-dir: no folder {root} (build it with `python -m spider.zoo build minizoo`)")
    manifest = read_manifest(root)
    recipe = get_recipe(manifest["recipe"])
    if recipe.hash != manifest.get("recipe_hash"):
        warnings.warn(f"{root}/zoo.json: built from another version of recipe {recipe.name!r}; "
                      "re-timing uses the current recipe's images", stacklevel=2)
    data = manifest["data"]
    gt_path = Path(data["ground_truth"])
    if not gt_path.is_file():
        raise ReportError(f"{gt_path}: missing; finish the zoo build (python -m spider.zoo build {recipe.name})")
    gt = read_ground_truth(gt_path)
    models, targets = list(data["models"]), list(data.get("test_datasets", data.get("target_datasets", [])))
    truth = gt.matrix(targets, models)
    if np.isnan(truth).any():
        t, m = np.argwhere(np.isnan(truth))[0]
        raise ReportError(f"{gt_path}: no accuracy for target {targets[t]!r}, model {models[m]!r}")
    return Zoo(root, manifest, recipe, FeatureStore(data["store"]), models, targets, data["general"], truth,
               None if data_dir is None else Path(data_dir))


# ------------------------------------------------------------------------------------ caches


class JsonCache:
    """A JSON dict on disk, rewritten atomically after every ``put`` (so a killed run resumes)."""

    def __init__(self, path: Path, identity: Mapping[str, Any]) -> None:
        self.path = path
        self.identity = json.loads(json.dumps(identity, default=str))
        self.values: dict[str, Any] = {}
        try:
            old = json.loads(path.read_text())
            if old.get("identity") == self.identity:
                self.values = old.get("values", {})
        except (OSError, ValueError):
            pass

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        write_text(self.path, json.dumps({"identity": self.identity, "values": self.values}, indent=1))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def progress(total: int, what: str) -> Iterator[Any]:
    """Counts finished items on one line per step (cheap; works in logs and terminals)."""
    state = {"done": 0, "start": time.perf_counter()}

    def advance(note: str = "") -> None:
        state["done"] += 1
        log(f"{what}: {state['done']}/{total} ({time.perf_counter() - state['start']:.0f} s) {note}")

    yield advance


# ------------------------------------------------------------------------------------ extraction


def _model_refs(zoo: Zoo) -> dict[str, Any]:
    """``{store model id: ModelRef}`` of every PTM, the general encoder and its alternatives
    (alternatives as ``general@<name>``)."""
    from spider.pipeline.recipe import timm_ref

    checkpoints = zoo.root / "checkpoints"
    refs = {r.id: r for r in zoo.recipe.ptm_refs(checkpoints)}
    refs[zoo.general] = zoo.recipe.general_ref(checkpoints)
    for name, spec in zoo.recipe.general_alternatives:
        refs[f"{zoo.general}@{name}"] = timm_ref(spec, checkpoints, zoo.general)
    return refs


def _store_of(zoo: Zoo, model: str):
    """The store holding ``model`` (``general@name`` lives in the alternative's store)."""
    from spider.store import FeatureStore

    if "@" in model:
        name = model.split("@", 1)[1]
        return FeatureStore(zoo.manifest["alternatives"][name]["store"]), model.split("@", 1)[0]
    return zoo.store, model


def time_extraction(zoo: Zoo, cache: JsonCache) -> dict[str, dict[str, float]]:
    """Seconds to extract every model's features of every target's stored images.

    Returns ``{model: {target: seconds}}`` and records ``max_rel_diff`` (largest
    ``|new - stored| / (|stored|max + 1e-6)`` over the entry) next to each time in the cache.
    """
    from spider.pipeline.extract import ArraySource, extract

    refs = _model_refs(zoo)
    todo = [(m, t) for m in refs for t in zoo.targets if cache.get(f"{m}|{t}") is None]
    if todo:
        views = {t.id: t.load(zoo.data_dir)["train"] for t in zoo.recipe.targets if t.id in zoo.targets}
        batch = zoo.recipe.extract_batch_size
        with progress(len(todo), "extraction timing") as advance:
            for model in dict.fromkeys(m for m, _ in todo):
                prepared = refs[model].load(zoo.data_dir)
                for target in [t for m, t in todo if m == model]:
                    view = views[target]
                    warm = ArraySource(view.images[:8], view.labels[:8], view.class_names, view.sample_ids[:8])
                    extract(prepared, warm, batch_size=batch, device="cpu", progress=False)
                    start = time.perf_counter()
                    out = extract(prepared, view.source(), batch_size=batch, device="cpu", progress=False)
                    seconds = time.perf_counter() - start
                    store, stored_id = _store_of(zoo, model)
                    stored = store.entry(stored_id, target).features().astype(np.float32)
                    diff = float(np.abs(out.features - stored).max() / (np.abs(stored).max() + 1e-6))
                    cache.put(f"{model}|{target}", {"seconds": seconds, "max_rel_diff": diff,
                                                    "images": len(view)})
                    advance(f"{model} on {target}: {seconds:.2f} s")
    return {m: {t: cache.get(f"{m}|{t}")["seconds"] for t in zoo.targets} for m in refs}


# ------------------------------------------------------------------------------------ baselines


def _contiguous(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def run_baselines(zoo: Zoo, names: Sequence[str], cache: JsonCache) -> tuple[dict, dict]:
    """Every baseline on every PTM's stored features (or source logits) of every whole target.

    Returns ``(scores, seconds)``, each ``{baseline: [T, M] float64}``; NaN score where a
    baseline failed (its error is kept in the cache and shown in the report).
    """
    from spider.baselines import get_baseline

    todo = [t for t in zoo.targets if any(cache.get(f"{b}|{t}") is None for b in names)]
    warmed = False
    with progress(len(todo) * len(zoo.models), "baselines") as advance:
        for target in todo:
            labels = _contiguous(zoo.store.entry(zoo.general, target).labels())
            rows: dict[str, dict[str, list]] = {b: {"score": [], "seconds": [], "error": []} for b in names}
            for model in zoo.models:
                entry = zoo.store.entry(model, target)
                inputs = {"features": np.ascontiguousarray(entry.features(), dtype=np.float32),
                          "source_logits": np.ascontiguousarray(entry.logits(), dtype=np.float32)
                          if entry.has_logits else None}
                if not warmed:  # first calls pay one-off costs (imports, kernel selection): untimed
                    _score_all(names, labels, inputs)
                    warmed = True
                for name in names:
                    baseline = get_baseline(name)
                    kwargs = {k: inputs[k] for k in baseline.needs}
                    error = ""
                    start = time.perf_counter()
                    try:
                        if any(v is None for v in kwargs.values()):
                            raise ReportError(f"{model} has no stored source logits")
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            value = float(baseline(labels=labels, **kwargs))
                    except Exception as err:  # noqa: BLE001 - any failure is a NaN cell, reported
                        value, error = math.nan, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                    rows[name]["seconds"].append(time.perf_counter() - start)
                    rows[name]["score"].append(value if math.isfinite(value) else None)
                    rows[name]["error"].append(error)
                advance(f"{target}/{model}")
            for name in names:
                cache.put(f"{name}|{target}", rows[name])
    scores = {b: np.array([[np.nan if v is None else v for v in cache.get(f"{b}|{t}")["score"]]
                           for t in zoo.targets], dtype=np.float64) for b in names}
    seconds = {b: np.array([cache.get(f"{b}|{t}")["seconds"] for t in zoo.targets], dtype=np.float64)
               for b in names}
    return scores, seconds


def _score_all(names: Sequence[str], labels: np.ndarray, inputs: Mapping[str, Any]) -> None:
    from spider.baselines import get_baseline

    for name in names:
        baseline = get_baseline(name)
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            baseline(labels=labels, **{k: inputs[k] for k in baseline.needs})


def baseline_errors(zoo: Zoo, names: Sequence[str], cache: JsonCache) -> list[str]:
    out = []
    for b in names:
        for t in zoo.targets:
            for m, error in zip(zoo.models, cache.get(f"{b}|{t}")["error"]):
                if error:
                    out.append(f"{b} on {m}/{t}: {error}")
    return out


# ------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainSpec:
    """One scorer to train: the settings an ablation varies (everything else is the budget's)."""

    scorer: str = "token"  # "token" (general tokens) or "reranker"
    loss: str = "listwise"
    label_tasks: int | None = None  # size of the label bank used (None: the whole bank)
    general: str = ""  # "" = the recipe's general encoder, else the name of a zoo alternative
    seed: int = 0
    epochs: int | None = None  # None: the budget's

    @property
    def name(self) -> str:
        bank = "all" if self.label_tasks is None else str(self.label_tasks)
        epochs = "" if self.epochs is None else f"-epochs{self.epochs}"
        return f"{self.scorer}-{self.loss}-tasks{bank}-general{self.general or 'main'}{epochs}-seed{self.seed}"


def general_source(zoo: Zoo, general: str) -> tuple[str, str, str]:
    """Where the task tokens of ``TrainSpec.general`` come from.

    Returns ``(store root, model id in that store, key of its extraction times)``.
    """
    if not general:
        return str(zoo.store.root), zoo.general, zoo.general
    alternatives = zoo.manifest.get("alternatives", {})
    if general not in alternatives:
        raise ReportError(f"zoo {zoo.root} has no alternative general encoder {general!r} "
                          f"(it has: {', '.join(alternatives) or 'none'})")
    return alternatives[general]["store"], zoo.general, f"{zoo.general}@{general}"


def _fit_config(zoo: Zoo, spec: TrainSpec, budget: Budget, work: Path, bank: int) -> dict[str, Any]:
    data = dict(zoo.manifest["data"])
    store, general, _ = general_source(zoo, spec.general)
    data.update(name=zoo.name, store=store, general=general, label_cache=str(work / "labels"), cache_dir=str(work / "cache"),
                num_label_tasks=spec.label_tasks or bank, tasks_per_epoch=budget.tasks_per_epoch,
                batch_size=budget.batch_size, val_tasks_per_target=0, label_workers=budget.label_workers, num_workers=0,
                specific_models=budget.specific_models if spec.scorer == "reranker" else 0)
    # A built zoo's store, read as a plain store (old manifests: flat task keys, target_datasets).
    task_keys = [k for k in ("min_datasets_per_task", "max_datasets_per_task", "min_classes_per_task",
                             "max_classes_per_task", "min_samples_per_class", "max_samples_per_class") if k in data]
    if task_keys:
        data["task"] = {k: data.pop(k) for k in task_keys}
    if "target_datasets" in data:
        data["test_datasets"], data["val_datasets"] = data.pop("target_datasets"), []
    data.update(zoo=None, zoo_dir=None, synthetic=None)
    model = dict(SCORER, name=spec.scorer, scorer=spec.scorer, loss=spec.loss)
    if spec.scorer == "reranker":
        model.update(specific_mode="append", rerank_topk=0)
    epochs = spec.epochs or budget.epochs
    trainer = dict(name="cpu", max_epochs=epochs, accelerator="cpu", devices=1, threads=1,
                   check_val_every_n_epoch=epochs + 1, enable_progress_bar=False, deterministic=True)
    return dict(data=data, model=model, trainer=trainer, logger={"name": "none"},
                run_dir=str(work / "runs" / spec.name), seed=spec.seed, results_table=False)


def copy_label_bank(zoo: Zoo, work: Path) -> int:
    """Copy the zoo's label cache into the work folder (fits write target scores next to it and
    may rewrite its manifest; the zoo's own copy stays untouched). Returns the bank size."""
    source = Path(zoo.manifest["data"]["label_cache"])
    manifest = source / "labels.json"
    if not manifest.is_file():
        raise ReportError(f"{source}: no label cache; finish the zoo build (python -m spider.zoo build {zoo.name})")
    bank = int(json.loads(manifest.read_text()).get("complete_tasks", 0))
    if bank < 1:
        raise ReportError(f"{source}: the label cache holds no complete tasks; finish the zoo build")
    target = work / "labels"
    if not target.is_dir():
        tmp = work / f".labels.tmp-{os.getpid()}"
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("targets", ".*"))
        os.replace(tmp, target)
    return bank


@contextlib.contextmanager
def _main_label_bank(main_store: str, main_general: str) -> Iterator[None]:
    """While active, datamodules read the label bank as built on ``main_store``/``main_general``.

    Another general encoder changes the task tokens only: the labels of a training task are
    baseline scores of the PTMs' features on the task's rows, and the rows come from class labels
    that every encoder's entries share (checked in :func:`check_same_rows`). The cache's identity
    also names and hashes the general encoder, so without this the bank would be recomputed
    (~6 CPU s per task on the mini zoo) to identical numbers.
    """
    import spider.train as fit_module  # train() builds its datamodule through this name

    original = fit_module.build_datamodule

    def build(*args, **kwargs):
        datamodule = original(*args, **kwargs)
        datamodule.model_names  # resolves the label settings
        datamodule.label_config = dataclasses.replace(datamodule.label_config, store=main_store,
                                                      general_encoder=main_general)
        return datamodule

    fit_module.build_datamodule = build
    try:
        yield
    finally:
        fit_module.build_datamodule = original


def check_same_rows(zoo: Zoo, general: str) -> None:
    """Another encoder's entries list the same samples and labels as the main encoder's."""
    from spider.store import FeatureStore

    root, model, _ = general_source(zoo, general)
    store = FeatureStore(root)
    datasets = list(zoo.manifest["data"]["pool_datasets"]) + zoo.targets
    for dataset in datasets:
        a, b = zoo.store.entry(zoo.general, dataset), store.entry(model, dataset)
        if not np.array_equal(a.labels(), b.labels()) or (
                a.sample_ids() is not None and not np.array_equal(a.sample_ids(), b.sample_ids())):
            raise ReportError(f"general encoder {general!r}: {dataset} lists other samples than the main one")


def train(zoo: Zoo, spec: TrainSpec, budget: Budget, work: Path, bank: int) -> Path:
    """Train (or reuse) one scorer; returns its ``last.ckpt``."""
    from spider.fit import fit

    cfg = _fit_config(zoo, spec, budget, work, bank)
    run_dir = Path(cfg["run_dir"])
    done = run_dir / "report-done.json"
    identity = json.dumps(cfg, sort_keys=True, default=str)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if done.is_file() and done.read_text() == identity and ckpt.is_file():
        return ckpt
    cfg["overwrite"] = True
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if spec.general:
            check_same_rows(zoo, spec.general)
            stack.enter_context(_main_label_bank(str(zoo.store.root), zoo.general))
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            result = fit(cfg)
    write_text(done, identity)
    log(f"trained {spec.name} in {time.perf_counter() - start:.0f} s "
        f"({result['episodes_per_second']:.0f} episodes/s)")
    return Path(result["checkpoint"])


# ------------------------------------------------------------------------------------ ranking


def _rank_values(order: Sequence[int], num: int) -> np.ndarray:
    """Scores [M] that sort like ``order`` (best first): M-1 for the first, 0 for the last."""
    values = np.empty(num)
    values[np.asarray(order)] = np.arange(num - 1, -1, -1, dtype=np.float64)
    return values


def rank_targets(ckpt: Path, zoo: Zoo, ks: Sequence[int], extraction: Mapping[str, Mapping[str, float]],
                 general: str = "") -> dict[int, dict[str, Any]]:
    """Rank every target with a trained scorer, general tokens (k=0) and re-ranking top-k.

    Returns ``{k: {"pred": [T, M], "seconds": [T], "extract_seconds": [T], "score_seconds": [T],
    "models": [[k PTM ids re-scored] per target]}}``; time = general extraction (+ the k
    re-scored PTMs' extractions) + the scorer's token and scoring stages.
    """
    from spider.modules.scorer_registry import load_scorer
    from spider.rank import rank_task

    model = load_scorer(ckpt)
    names = list(model.spider_info["model_names"])
    if names != zoo.models:
        raise ReportError(f"{ckpt}: ranks {names}, the zoo lists {zoo.models}")
    store, general_model, general_key = general_source(zoo, general)
    out: dict[int, dict[str, Any]] = {}
    for k in ks:
        rec: dict[str, Any] = {"pred": [], "seconds": [], "extract_seconds": [], "score_seconds": [], "models": []}
        for target in zoo.targets:
            result = rank_task(model, store, target, general=general_model, rerank_topk=k)
            if k == 0:
                pred = np.array([result.general_scores[m] for m in zoo.models])
            else:
                pred = _rank_values([zoo.models.index(m) for m in result.models], len(zoo.models))
            rescored = [m for m, t in zip(result.models, result.tokens) if t == "specific"]
            ms = result.timings_ms
            score = (ms["tokens"] + ms["score"] + ms.get("rerank", 0.0)) / 1000.0
            extract_s = extraction[general_key][target] + sum(extraction[m][target] for m in rescored)
            rec["pred"].append(pred)
            rec["score_seconds"].append(score)
            rec["extract_seconds"].append(extract_s)
            rec["seconds"].append(score + extract_s)
            rec["models"].append(rescored)
        rec["pred"] = np.stack(rec["pred"])
        out[k] = rec
    return out


# ------------------------------------------------------------------------------------ metrics


def task_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-target ``wtau_paper``, ``wtau_symmetric``, ``top1_regret`` of predictions [T, M].

    NaN predictions (a failed baseline) leave that PTM out of the target's ranking.
    """
    from spider.metrics.functional import top1_regret, weighted_tau

    truth_t = torch.as_tensor(truth, dtype=torch.float64)
    pred_t = torch.as_tensor(pred, dtype=torch.float64)
    mask = torch.isfinite(pred_t)
    pred_t = torch.nan_to_num(pred_t)
    out = {name: weighted_tau(truth_t, pred_t, rank=rank, mask=mask).numpy() for name, rank in PROTOCOLS.items()}
    out["top1_regret"] = top1_regret(truth_t, pred_t, mask=mask).numpy()
    return out


@dataclass
class MethodResult:
    """One row of the report: per-target metrics and the cost of one selection."""

    name: str
    kind: str  # "baseline", "aggregate", "spider"
    metrics: dict[str, np.ndarray]  # metric -> [T] (mean over seeds for spider rows)
    seconds: np.ndarray  # [T] wall time of one selection (extraction + scoring)
    extract_seconds: np.ndarray  # [T]
    score_seconds: np.ndarray  # [T]
    ptm_passes: int  # PTM forward passes over the target
    general_passes: int  # general-encoder forward passes over the target
    spread: dict[str, float] = field(default_factory=dict)  # metric -> std over seeds of the mean
    note: str = ""
    preds: list[np.ndarray] = field(default_factory=list)  # [T, M] scores, one per seed

    def mean(self, metric: str) -> float:
        return _nanmean(self.metrics[metric])


def _nanmean(values: Any) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def spider_result(name: str, runs: Sequence[dict[str, Any]], truth: np.ndarray, ptm_passes: int,
                  note: str = "") -> MethodResult:
    """Average one ranker's per-target metrics and costs over its seeds."""
    per_seed = [task_metrics(truth, r["pred"]) for r in runs]
    metrics = {m: np.mean([s[m] for s in per_seed], axis=0) for m in METRICS}
    spread = {m: float(np.std([_nanmean(s[m]) for s in per_seed])) for m in METRICS} if len(runs) > 1 else {}
    mean = lambda key: np.mean([np.asarray(r[key]) for r in runs], axis=0)  # noqa: E731
    return MethodResult(name, "spider", metrics, mean("seconds"), mean("extract_seconds"), mean("score_seconds"),
                        ptm_passes, 1, spread, note, [r["pred"] for r in runs])


# ------------------------------------------------------------------------------------ charts


def ability_profiles(ckpt: Path, zoo: Zoo, datasets: Sequence[str], tasks: int, seed: int = 0) -> np.ndarray:
    """What the scorer says each PTM is good at: [M, len(datasets)] in [0, 1].

    For every dataset, ``tasks`` random tasks (up to 10 classes of up to 20 images, seeded) are
    scored; each task's scores become percentile ranks among the M PTMs (1 = ranked first), and
    the profile is their mean: the paper's "averaged similarity between a PTM and the tasks".
    """
    from spider.datamodules.tokens import class_centres
    from spider.modules.scorer_registry import load_scorer

    model = load_scorer(ckpt)
    rng = np.random.default_rng(seed)
    out = np.zeros((len(zoo.models), len(datasets)))
    for d, dataset in enumerate(datasets):
        entry = zoo.store.entry(zoo.general, dataset)
        labels = _contiguous(entry.labels())
        classes = np.unique(labels)
        ways = min(10, len(classes))
        tokens = []
        for _ in range(tasks):
            chosen = rng.choice(classes, ways, replace=False)
            rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:20] for c in chosen])
            relabel = np.searchsorted(np.sort(chosen), labels[rows])
            tokens.append(class_centres(entry.features(np.sort(rows)), relabel[np.argsort(rows)], ways).float())
        batch = torch.stack(tokens)
        with torch.no_grad():
            scores = model(batch, torch.ones(batch.shape[:2], dtype=torch.bool)).numpy()
        ranks = scores.argsort(axis=1).argsort(axis=1) / max(len(zoo.models) - 1, 1)
        out[:, d] = ranks.mean(axis=0)
    return out


def truth_profiles(zoo: Zoo, datasets: Sequence[str]) -> np.ndarray:
    """[M, len(datasets)] percentile rank of each PTM's true accuracy (NaN for non-targets)."""
    out = np.full((len(zoo.models), len(datasets)), np.nan)
    for d, dataset in enumerate(datasets):
        if dataset in zoo.targets:
            acc = zoo.truth[zoo.targets.index(dataset)]
            out[:, d] = acc.argsort().argsort() / max(len(zoo.models) - 1, 1)
    return out


def _group_axes(datasets: Sequence[str], values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Merge the Omniglot-evaluation targets (same kind of task) into one spider-chart axis."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(datasets):
        groups.setdefault("omniglot_eval" if d.startswith("omniglot_eval") else d, []).append(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        merged = np.stack([np.nanmean(values[:, idx], axis=1) for idx in groups.values()], axis=1)
    return list(groups), merged


def plot_spider_charts(path: Path, zoo: Zoo, axes_names: Sequence[str], learned: np.ndarray,
                       truth: np.ndarray, pool: Sequence[str]) -> None:
    """One radar per PTM: the learned profile (filled) and the true rank on targets (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num = len(zoo.models)
    cols = min(5, num)
    rows = math.ceil(num / cols)
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    labels = [f"{a}*" if a in pool else a for a in axes_names]
    fig = plt.figure(figsize=(3.2 * cols, 3.3 * rows + 0.6))
    for m, name in enumerate(zoo.models):
        ax = fig.add_subplot(rows, cols, m + 1, projection="polar")
        values = np.concatenate([learned[m], learned[m, :1]])
        ax.plot(closed, values, color="tab:red", linewidth=1.2)
        ax.fill(closed, values, color="tab:red", alpha=0.25)
        known = np.isfinite(truth[m])
        ax.scatter(angles[known], truth[m][known], color="black", s=12, zorder=3)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.5, 1.0])
        ax.set_yticklabels([])
        ax.set_xticks(angles)
        ax.set_xticklabels(labels, fontsize=6)
        ax.set_title(name, fontsize=8, pad=10)
    fig.suptitle("Model Spider's view of each PTM: mean percentile rank over sampled tasks of each dataset "
                 "(red; * = pool dataset)\nblack dots: true rank by fine-tuned accuracy on the targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


def plot_efficiency(path: Path, rows: Sequence[MethodResult]) -> None:
    """Mean weighted tau (paper protocol) against mean selection time, log x (paper Fig. 1c)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "tab:gray", "aggregate": "black", "spider": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = [r for r in rows if "re-ranker, general" not in r.name]  # same cost as "general", less clutter
    # Forward-based methods share (almost) one x: alternate their labels left and right in y order.
    side = {r.name: i % 2 for i, r in enumerate(sorted((r for r in rows if r.kind != "spider"),
                                                        key=lambda r: r.mean("wtau_paper")))}
    for i, row in enumerate(rows):
        x, y = float(np.mean(row.seconds)), row.mean("wtau_paper")
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        ax.scatter([x], [y], color=colours[row.kind], s=20 + 3 * row.ptm_passes, zorder=3)
        left = side.get(row.name) == 1
        offset = (-7, -3) if left else (7, -3) if row.name in side else (5, 4 if i % 2 == 0 else -9)
        ax.annotate(row.name.replace(f"{SPIDER} ", "MS "), (x, y), fontsize=7, color=colours[row.kind],
                    xytext=offset, textcoords="offset points", ha="right" if left else "left")
    spider_rows = sorted((r for r in rows if r.name.startswith(f"{SPIDER} ") and "rerank" in r.name or
                          r.name == f"{SPIDER} general"), key=lambda r: float(np.mean(r.seconds)))
    if len(spider_rows) > 1:
        ax.plot([float(np.mean(r.seconds)) for r in spider_rows], [r.mean("wtau_paper") for r in spider_rows],
                color="tab:red", linewidth=0.8, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("selection time per target (s, log scale): PTM/general forward passes + scoring")
    ax.set_ylabel("mean weighted tau (wtau_paper)")
    ax.set_title("PTM selection: ranking quality vs time (marker size ~ PTM forward passes)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ report


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        # Code the numbers depend on: the package, its configs and this script (untracked counts too).
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "spider", "configs",
                                "experiments/minizoo/report.py"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.split("\n")
        changed = sorted({line[3:].strip() for line in dirty if line.strip()})
        if not changed:
            return head
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        return f"{head} plus uncommitted changes to {shown}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}; timings single-threaded")


def _fmt(value: float, digits: int = 3, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fmt_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def metric_table(rows: Sequence[MethodResult], targets: Sequence[str], metric: str) -> str:
    digits, signed = (2, False) if metric == "top1_regret" else (3, True)
    head = "| method | " + " | ".join(targets) + " | **mean** |"
    lines = [head, "|" + "---|" * (len(targets) + 2)]
    for row in rows:
        cells = [_fmt(v, digits, signed) for v in row.metrics[metric]]
        mean = _fmt(row.mean(metric), digits, signed)
        if row.spread.get(metric):
            mean += f" ± {row.spread[metric]:.{digits}f}"
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | **{mean}** |")
    return "\n".join(lines)


def cost_table(rows: Sequence[MethodResult], reference: MethodResult) -> str:
    lines = ["| method | PTM forward passes | general-encoder passes | extraction | scoring | total | "
             "share of Copeland's time |", "|---|---|---|---|---|---|---|"]
    ref = float(np.mean(reference.seconds))
    for row in rows:
        total = float(np.mean(row.seconds))
        lines.append(f"| {row.name} | {row.ptm_passes} | {row.general_passes} | "
                     f"{_fmt_seconds(float(np.mean(row.extract_seconds)))} | "
                     f"{_fmt_seconds(float(np.mean(row.score_seconds)))} | {_fmt_seconds(total)} | "
                     f"{100 * total / ref:.1f}% |")
    return "\n".join(lines)


def ablation_table(entries: Sequence[dict[str, Any]]) -> str:
    lines = ["| setting | wtau_paper | wtau_symmetric | top-1 regret (points) | seeds |", "|---|---|---|---|---|"]
    for e in entries:
        cells = []
        for metric, digits, signed in (("wtau_paper", 3, True), ("wtau_symmetric", 3, True),
                                       ("top1_regret", 2, False)):
            text = _fmt(e["mean"][metric], digits, signed)
            if e["spread"].get(metric):
                text += f" ± {e['spread'][metric]:.{digits}f}"
            cells.append(text)
        lines.append(f"| {e['setting']} | " + " | ".join(cells) + f" | {e['seeds']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ goal check


def goal_check(rows: Mapping[str, MethodResult], baselines: Sequence[str], ablations: Mapping[str, Any]) -> dict:
    """The issue's goal, decided from the numbers: returns the verdicts and the sentences."""
    general, rerank3, copeland = rows[f"{SPIDER} general"], rows[f"{SPIDER} rerank@3"], rows[AGGREGATE]
    singles = [rows[b] for b in baselines if math.isfinite(rows[b].mean("wtau_paper"))]
    best = max(singles, key=lambda r: r.mean("wtau_paper"))
    best_default = max((rows[b] for b in DEFAULT_BASELINES if b in rows), key=lambda r: r.mean("wtau_paper"))
    time_of = lambda r: float(np.mean(r.seconds))  # noqa: E731
    g1 = general.mean("wtau_paper") > best.mean("wtau_paper")
    g2 = rerank3.mean("wtau_paper") > copeland.mean("wtau_paper")
    f1, f2 = time_of(general) / time_of(best), time_of(rerank3) / time_of(copeland)
    yes = lambda ok: "**Yes**" if ok else "**No**"  # noqa: E731

    def margin(ours: MethodResult, theirs: MethodResult) -> str:
        diff, noise = ours.mean("wtau_paper") - theirs.mean("wtau_paper"), ours.spread.get("wtau_paper", 0.0)
        text = f"margin {diff:+.3f}"
        if noise and abs(diff) < 2 * noise:
            text += f", within twice the seed spread ({noise:.3f}): a tie rather than a clear result"
        return text
    lines = [
        f"1. Model Spider with general tokens vs the best single baseline ({best.name}) on mean weighted tau "
        f"(wtau_paper): {_fmt(general.mean('wtau_paper'))} vs {_fmt(best.mean('wtau_paper'))} -> "
        f"{yes(g1)}, it {'beats' if g1 else 'does not beat'} it ({margin(general, best)}), at {100 * f1:.1f}% of its time "
        f"({_fmt_seconds(time_of(general))} vs {_fmt_seconds(time_of(best))} per target). "
        f"(Best of the four label baselines: {best_default.name}, {_fmt(best_default.mean('wtau_paper'))}; "
        f"symmetric protocol: {_fmt(general.mean('wtau_symmetric'))} vs {best.name} "
        f"{_fmt(best.mean('wtau_symmetric'))}.)",
        f"2. Model Spider with top-3 re-ranking vs the Copeland aggregate of {', '.join(DEFAULT_BASELINES)}: "
        f"{_fmt(rerank3.mean('wtau_paper'))} vs {_fmt(copeland.mean('wtau_paper'))} -> {yes(g2)}, it "
        f"{'beats' if g2 else 'does not beat'} it ({margin(rerank3, copeland)}), at {100 * f2:.1f}% of its time "
        f"({_fmt_seconds(time_of(rerank3))} vs {_fmt_seconds(time_of(copeland))}; 3 instead of "
        f"{copeland.ptm_passes} PTM forward passes).",
    ]
    return {"general_beats_best_single": bool(g1), "rerank3_beats_copeland": bool(g2),
            "best_single_baseline": best.name, "general_time_fraction": f1, "rerank3_time_fraction": f2,
            "text": lines}


def rerank_changes(zoo: Zoo, rerank_runs: Sequence[Mapping[int, Mapping[str, Any]]], k: int) -> tuple[int, int]:
    """(targets x seeds whose top-k order the re-scoring changed, targets x seeds)."""
    changed = total = 0
    for run in rerank_runs:
        for t in range(len(zoo.targets)):
            general = [zoo.models[m] for m in np.argsort(-run[0]["pred"][t], kind="stable")[:k]]
            changed += int(run[k]["models"][t] != general)
            total += 1
    return changed, total


def teacher_agreement(student: MethodResult, teacher: MethodResult) -> float:
    """Mean over seeds and targets of wtau_symmetric between the teacher's and the student's scores."""
    from spider.metrics.functional import weighted_tau

    values = [weighted_tau(torch.as_tensor(teacher.preds[0]), torch.as_tensor(pred), rank=True).numpy()
              for pred in student.preds]
    return _nanmean(np.concatenate(values))


def diagnosis(rows: Mapping[str, MethodResult], ablations: Mapping[str, Any], zoo: Zoo, seeds: int,
              changes: tuple[int, int], specific_models: int) -> list[str]:
    """Facts that explain the outcome, computed from the numbers (the text is not hand-edited)."""
    copeland, wide, general = rows[AGGREGATE], rows[AGGREGATE_ALL], rows[f"{SPIDER} general"]
    singles = [r for r in rows.values() if r.kind == "baseline" and math.isfinite(r.mean("wtau_paper"))]
    best = max(singles, key=lambda r: r.mean("wtau_paper"))
    gap = general.mean("wtau_paper") - copeland.mean("wtau_paper")
    noise = max(2 * general.spread.get("wtau_paper", 0.0), 0.02)
    relation = ("about as well as" if abs(gap) <= noise else "better than" if gap > 0 else "worse than")
    first = (f"Model Spider learns from Copeland rankings of {', '.join(DEFAULT_BASELINES)} on pool tasks. On the "
             f"targets those same labels reach {_fmt(copeland.mean('wtau_paper'))} (wtau_paper) and the general-token "
             f"scorer {_fmt(general.mean('wtau_paper'))}: it ranks {relation} its teacher (their rankings agree at "
             f"wtau_symmetric {_fmt(teacher_agreement(general, copeland))}).")
    trail = best.mean("wtau_paper") - copeland.mean("wtau_paper")
    if trail > 0:
        first += (f" The teacher itself trails the best single baseline ({best.name}) by {trail:.3f}, so a "
                  "scorer that learns its teacher well cannot be expected to beat that baseline.")
    out = [first]
    if best.name not in DEFAULT_BASELINES:
        out.append(f"The best single baseline, {best.name}, is not one of the label baselines. Widening the labels "
                   f"to all {len(singles)} baselines lowers the teacher to {_fmt(wide.mean('wtau_paper'))} "
                   f"({AGGREGATE_ALL} row), and picking the label baselines that happen to do well on these targets "
                   "would be tuning on the test set, so neither was used.")
    wins = [t for i, t in enumerate(zoo.targets) if general.metrics["wtau_paper"][i] > best.metrics["wtau_paper"][i]]
    out.append(f"Model Spider (general) beats {best.name} on {len(wins)} of {len(zoo.targets)} targets"
               + (f" ({', '.join(wins)})" if wins else "") + f"; its top-1 regret is {general.mean('top1_regret'):.2f} "
               f"points vs {best.mean('top1_regret'):.2f} for {best.name} and {copeland.mean('top1_regret'):.2f} for "
               "the Copeland aggregate.")
    out.append(f"Re-ranking changed the order of the top 3 on {changes[0]} of {changes[1]} (target, seed) pairs: the "
               f"re-ranker saw PTM-specific tokens of only {specific_models} random PTMs per training task, and its "
               "specific scores mostly confirm the general ranking, so the k = 1, 3, 5 rows stay close to its "
               "general-token row.")
    if general.spread:
        out.append(f"Seed spread (std over {seeds} scorers) of the mean wtau_paper: {general.spread['wtau_paper']:.3f}; "
                   f"with {len(zoo.targets)} targets, differences below about twice that are noise.")
    for name, entries in ablations["studies"].items():
        finite = [e for e in entries if math.isfinite(e["mean"]["wtau_paper"])]
        if finite:
            top = max(finite, key=lambda e: e["mean"]["wtau_paper"])
            out.append(f"Tried (ablation '{name}'): " + ", ".join(
                f"{e['setting']} {_fmt(e['mean']['wtau_paper'])}" for e in entries) + f"; best: {top['setting']}.")
    return out


# ------------------------------------------------------------------------------------ driver


def _method_order(baselines: Sequence[str]) -> list[str]:
    return ([*baselines, AGGREGATE, AGGREGATE_ALL, f"{SPIDER} general", f"{SPIDER} re-ranker, general tokens"]
            + [f"{SPIDER} rerank@{k}" for k in RERANK_KS])


def build_rows(zoo: Zoo, baselines: Sequence[str], scores: Mapping[str, np.ndarray],
               seconds: Mapping[str, np.ndarray], extraction: Mapping[str, Mapping[str, float]],
               token_runs: Sequence[dict], rerank_runs: Sequence[dict[int, dict]]) -> dict[str, MethodResult]:
    """Every method row of the report, keyed by name (see :func:`_method_order`)."""
    from spider.aggregate import copeland

    num = len(zoo.models)
    all_extract = np.array([sum(extraction[m][t] for m in zoo.models) for t in zoo.targets])
    rows: dict[str, MethodResult] = {}
    for b in baselines:
        score_s = seconds[b].sum(axis=1)
        rows[b] = MethodResult(b, "baseline", task_metrics(zoo.truth, scores[b]), all_extract + score_s, all_extract,
                               score_s, num, 0)
    for name, members in ((AGGREGATE, DEFAULT_BASELINES), (AGGREGATE_ALL, tuple(baselines))):
        agg, agg_seconds = [], []
        for t in range(len(zoo.targets)):
            start = time.perf_counter()
            agg.append(np.asarray(copeland(np.stack([scores[b][t] for b in members])).scores, dtype=np.float64))
            agg_seconds.append(time.perf_counter() - start + sum(seconds[b][t].sum() for b in members))
        agg_seconds = np.array(agg_seconds)
        rows[name] = MethodResult(name, "aggregate", task_metrics(zoo.truth, np.stack(agg)), all_extract + agg_seconds,
                                  all_extract, agg_seconds, num, 0, note=f"Copeland of {', '.join(members)}",
                                  preds=[np.stack(agg)])
    rows[f"{SPIDER} general"] = spider_result(f"{SPIDER} general", token_runs, zoo.truth, 0,
                                              "TokenScorer, general tokens only")
    rows[f"{SPIDER} re-ranker, general tokens"] = spider_result(
        f"{SPIDER} re-ranker, general tokens", [r[0] for r in rerank_runs], zoo.truth, 0,
        "the ReRanker's own general ranking (k = 0), the starting point of its re-ranking")
    for k in RERANK_KS:
        rows[f"{SPIDER} rerank@{k}"] = spider_result(f"{SPIDER} rerank@{k}", [r[k] for r in rerank_runs], zoo.truth,
                                                     min(k, num), f"ReRanker, top {k} re-scored with their own features")
    return rows


def run_ablations(zoo: Zoo, budget: Budget, work: Path, bank: int, extraction, main_spec: TrainSpec) -> dict:
    """Loss, label-bank size and general encoder, each varied alone from the main setting."""
    def evaluate(spec: TrainSpec) -> dict[str, Any]:
        ckpt = train(zoo, spec, budget, work, bank)
        return rank_targets(ckpt, zoo, (0,), extraction, general=spec.general)[0]

    def entry(setting: str, specs: Sequence[TrainSpec]) -> dict[str, Any]:
        row = spider_result(setting, [evaluate(s) for s in specs], zoo.truth, 0)
        return {"setting": setting, "mean": {m: row.mean(m) for m in METRICS}, "spread": row.spread,
                "per_target": {m: row.metrics[m].tolist() for m in METRICS}, "seeds": len(specs)}

    seeds = budget.ablation_seeds
    specs = lambda **kw: [dataclasses.replace(main_spec, seed=s, **kw) for s in seeds]  # noqa: E731
    out: dict[str, Any] = {}
    out["ranking loss"] = [entry(f"loss={loss}" + (" (main)" if loss == main_spec.loss else ""),
                                 specs(loss=loss)) for loss in budget.ablation_losses]
    sizes = sorted(set(budget.ablation_tasks) | {bank})
    out["training tasks"] = [entry(f"{n} labelled tasks" + (" (main: the zoo's bank)" if n == bank else ""),
                                   specs(label_tasks=None if n == bank else n)) for n in sizes]
    for n in (n for n in sizes if n > bank):  # same passes over each task as the main setting, more episodes
        epochs = budget.epochs * n // bank
        out["training tasks"].append(entry(f"{n} labelled tasks, {epochs} epochs ({n // bank}x the episodes)",
                                           specs(label_tasks=n, epochs=epochs)))
    alternatives = zoo.manifest.get("alternatives", {})
    encoder = zoo.manifest["general"]
    general = [entry(f"{encoder['model']} trained on the pool (main)", specs())]
    for name, alt in alternatives.items():
        general.append(entry(f"{name}: {alt.get('description') or alt['encoder']['provenance']}", specs(general=name)))
    out["general encoder"] = general
    return {"seeds": list(seeds), "studies": out}


def report(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    budget = QUICK if args.quick else Budget()
    zoo = open_zoo(args.zoo_dir, args.data_dir)
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else REPO / "artifacts" / f"{zoo.root.resolve().name}-report"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log(f"zoo {zoo.name}: {len(zoo.models)} PTMs, targets {', '.join(zoo.targets)}; work folder {work}")

    identity = {"recipe": zoo.manifest.get("recipe_hash"), "models": zoo.models, "targets": zoo.targets,
                "threads": args.threads, "host": platform.node()}
    extraction = time_extraction(zoo, JsonCache(work / "extraction_times.json", identity))
    extraction_cache = JsonCache(work / "extraction_times.json", identity)
    baselines = [b for b in budget.baselines]
    baseline_cache = JsonCache(work / "baselines.json", dict(identity, baselines=baselines))
    scores, seconds = run_baselines(zoo, baselines, baseline_cache)

    bank = copy_label_bank(zoo, work)
    main_spec = TrainSpec()
    log(f"training {len(budget.seeds)} token scorer(s) and re-ranker(s) on a bank of {bank} labelled tasks")
    token_ckpts = [train(zoo, dataclasses.replace(main_spec, seed=s), budget, work, bank) for s in budget.seeds]
    rerank_ckpts = [train(zoo, dataclasses.replace(main_spec, scorer="reranker", seed=s), budget, work, bank)
                    for s in budget.seeds]
    token_runs = [rank_targets(c, zoo, (0,), extraction)[0] for c in token_ckpts]
    rerank_runs = [rank_targets(c, zoo, (0, *RERANK_KS), extraction) for c in rerank_ckpts]
    rows = build_rows(zoo, baselines, scores, seconds, extraction, token_runs, rerank_runs)

    log("ablations")
    ablations = run_ablations(zoo, budget, work, bank, extraction, main_spec)

    pool = list(zoo.manifest["data"]["pool_datasets"])
    datasets = pool + zoo.targets
    axes_names, learned = _group_axes(datasets, ability_profiles(token_ckpts[0], zoo, datasets, budget.chart_tasks))
    _, truth_axes = _group_axes(datasets, truth_profiles(zoo, datasets))
    out.mkdir(parents=True, exist_ok=True)
    order = [rows[n] for n in _method_order(baselines)]
    plot_efficiency(out / "efficiency.png", order)
    plot_spider_charts(out / "spider_charts.png", zoo, axes_names, learned, truth_axes, pool)

    goal = goal_check(rows, baselines, ablations)
    changes = rerank_changes(zoo, rerank_runs, 3)
    results = {
        "command": args.command_line, "commit": git_commit(), "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "zoo": {"dir": str(zoo.root), "recipe": zoo.name, "recipe_hash": zoo.manifest.get("recipe_hash"),
                "models": zoo.models, "targets": zoo.targets, "general": zoo.manifest["general"],
                "label_bank": bank},
        "budget": dataclasses.asdict(budget), "scorer": SCORER, "quick": bool(args.quick),
        "truth": {t: dict(zip(zoo.models, zoo.truth[i].tolist())) for i, t in enumerate(zoo.targets)},
        "methods": {r.name: {"kind": r.kind, "note": r.note, "ptm_forward_passes": r.ptm_passes,
                             "general_forward_passes": r.general_passes,
                             "mean": {m: r.mean(m) for m in METRICS}, "seed_std": r.spread,
                             "per_target": {m: dict(zip(zoo.targets, r.metrics[m].tolist())) for m in METRICS},
                             "seconds": {"total": float(np.mean(r.seconds)), "extraction": float(np.mean(r.extract_seconds)),
                                         "scoring": float(np.mean(r.score_seconds)),
                                         "per_target": dict(zip(zoo.targets, r.seconds.tolist()))}}
                    for r in order},
        "extraction_seconds": extraction,
        "extraction_check_max_rel_diff": max(v["max_rel_diff"] for v in extraction_cache.values.values()),
        "baseline_errors": baseline_errors(zoo, baselines, baseline_cache),
        "reranked_models": {f"rerank@{k}": [dict(zip(zoo.targets, r[k]["models"])) for r in rerank_runs]
                            for k in RERANK_KS},
        "ablations": ablations,
        "spider_chart": {"axes": axes_names, "learned": dict(zip(zoo.models, learned.tolist())),
                         "truth": dict(zip(zoo.models, truth_axes.tolist()))},
        "goal": goal,
        "diagnosis": diagnosis(rows, ablations, zoo, len(budget.seeds), changes, budget.specific_models),
        "rerank_changed_top3": {"changed": changes[0], "of": changes[1]},
        "report_seconds": time.perf_counter() - started,
    }
    write_text(out / "results.json", json.dumps(_jsonable(results), indent=1))
    write_text(out / "report.md", render_markdown(results, zoo, order))
    log(f"wrote {out / 'report.md'} in {results['report_seconds']:.0f} s")
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def render_markdown(results: Mapping[str, Any], zoo: Zoo, rows: Sequence[MethodResult]) -> str:
    targets = zoo.targets
    budget = results["budget"]
    in_domain = {t.id: t.in_domain for t in zoo.recipe.targets}
    targets_md = "\n".join(
        f"| {t.id} | {t.note or t.source} | {zoo.store.entry(zoo.general, t.id).num_classes} | "
        f"{zoo.store.entry(zoo.general, t.id).num_samples} | {', '.join(in_domain[t.id]) or 'none'} |"
        for t in zoo.recipe.targets if t.id in targets)
    copeland = next(r for r in rows if r.name == AGGREGATE)
    quick = "\n> **Quick smoke run** (`--quick`): tiny training budget; the numbers mean nothing.\n" if results["quick"] else ""
    gen = results["zoo"]["general"]
    parts = [
        f"# Benchmark report: {zoo.name}",
        quick,
        "Generated by one command (do not edit by hand):",
        f"```bash\n{results['command']}\n```",
        f"- commit: `{results['commit']}`",
        f"- machine: {results['machine']}; the 2 cores were shared with other jobs during the run, so times "
        "carry noise of maybe +-30%, the same for every method",
        f"- date: {results['date']}; report run time {results['report_seconds'] / 60:.1f} min",
        f"- zoo: `{zoo.root}` (recipe `{zoo.name}`, hash {results['zoo']['recipe_hash']}): "
        f"{len(zoo.models)} PTMs, {len(targets)} targets, label bank of {results['zoo']['label_bank']} tasks; "
        f"general encoder `{gen['model']}` ({gen.get('description') or gen['provenance']})",
        f"- Model Spider: {budget['epochs']} epochs x {budget['tasks_per_epoch']} episodes (batch "
        f"{budget['batch_size']}), scorer {json.dumps(results['scorer'])}, listwise loss; "
        f"{len(budget['seeds'])} seed(s), tables show the mean over seeds (± the std over seeds of the mean over targets); "
        f"the re-ranker sees PTM-specific tokens of {budget['specific_models']} random PTMs per training task. "
        "Nothing was tuned on the targets.",
        "",
        "## Targets",
        "| target | what | classes | labelled images (train split) | PTMs pre-trained on its domain |",
        "|---|---|---|---|---|",
        targets_md,
        "",
        "Ground truth: each PTM fine-tuned end to end on the target's train split (learning rate picked on a "
        "validation split, mean over seeds), accuracy on a held-out test split (`ground_truth.csv`). Every method "
        "ranks the PTMs from the same train split.",
        "",
        "## Goal check",
        *results["goal"]["text"],
        "",
        "What explains it:",
        *[f"- {line}" for line in results["diagnosis"]],
        "",
        "## Ranking quality",
        "Weighted Kendall's tau between the predicted scores and the fine-tuned accuracies of the "
        f"{len(zoo.models)} PTMs, per target and mean over targets. `wtau_paper` = "
        "`scipy.stats.weightedtau(truth, pred, rank=None)` (weights by the true ranking; the paper's "
        "protocol), `wtau_symmetric` = scipy's default `rank=True`. Re-ranking only permutes the top k, so "
        "its scores are ranks.",
        "",
        "### wtau_paper",
        metric_table(rows, targets, "wtau_paper"),
        "",
        "### wtau_symmetric",
        metric_table(rows, targets, "wtau_symmetric"),
        "",
        "### Top-1 regret (accuracy points lost by fine-tuning the PTM ranked first instead of the best; lower "
        "is better)",
        metric_table(rows, targets, "top1_regret"),
        "",
        "## Cost of one selection (mean per target)",
        "Extraction = forward passes of the models over the target's labelled images (re-timed here, model "
        "loading excluded; the re-extracted features differ from the stored ones by at most "
        f"{results['extraction_check_max_rel_diff']:.1e} relative); scoring = the baseline(s) on those features, or "
        "Model Spider's class centres and scorer forward (+ the re-scoring of the top k). A forward-based "
        f"method needs all {len(zoo.models)} PTMs' features of the target; its extraction column is the sum.",
        "",
        cost_table(rows, copeland),
        "",
        "![quality vs time](efficiency.png)",
        "",
        "*Mean wtau_paper against selection time per target, log scale (the paper's Figure 1c). Grey: single "
        "baselines, black: Copeland aggregate, red: Model Spider (line: general tokens, then re-ranking top "
        "1/3/5).*",
        "",
        "## Spider charts: what the learned tokens say each PTM is good at",
        "For every dataset, tasks of up to 10 classes are sampled and scored by the trained scorer (seed 0); a "
        "PTM's value on an axis is its mean percentile rank among the PTMs over those tasks (1 = always ranked "
        "first). Axes marked * are pool datasets (training tasks come from them), the others are targets "
        "(the three Omniglot-evaluation targets share one axis); black dots are the PTM's true percentile rank "
        "by fine-tuned accuracy on the targets.",
        "",
        "![spider charts](spider_charts.png)",
        "",
        "## Ablations",
        "Each varies one setting of Model Spider with general tokens (everything else as above, "
        f"{len(results['ablations']['seeds'])} seed(s) each, same number of training episodes unless the row "
        "says otherwise).",
    ]
    for name, entries in results["ablations"]["studies"].items():
        parts += ["", f"### {name}", ablation_table(entries)]
    parts += ["", "Training-task banks are the first n tasks of one seeded sequence (a bank larger than the zoo's is "
              "labelled on first use, in the work folder); every setting trains on the same number of episodes, "
              "so a small bank is revisited more often.",
              "The alternative general encoder reuses the main label bank: a task's labels depend on the PTMs' "
              "features of its rows only, and the alternative's entries list the same rows and labels (checked)."]
    errors = results["baseline_errors"]
    parts += ["", "## Notes", f"- Baseline failures (NaN, left out of that target's ranking): "
              f"{len(errors)}" + ("" if not errors else "; " + "; ".join(errors[:10]))]
    parts += ["- Re-ranked PTMs (seed 0): " + "; ".join(
        f"{t}: {', '.join(m)}" for t, m in results["reranked_models"]["rerank@3"][0].items())]
    parts += [f"- Raw numbers: [results.json](results.json)."]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/minizoo/report.py", description=__doc__.split("\n")[0])
    parser.add_argument("--zoo-dir", default=str(REPO / "artifacts" / "minizoo"), help="built zoo folder")
    parser.add_argument("--out", default=str(HERE), help="where report.md, results.json and the PNGs go")
    parser.add_argument("--work-dir", default=None, help="intermediate results (default artifacts/<zoo>-report)")
    parser.add_argument("--data-dir", default=None, help="shared data folder (default SPIDER_DATA_DIR or ../shared/data)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training budget")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every timed stage")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    args.command_line = " ".join(["python experiments/minizoo/report.py", *given])
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    try:
        report(args)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
