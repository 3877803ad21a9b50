"""Add a PTM to a trained ranker without retraining it (``spider zoo add-model``).

The paper's incremental zoo: a new PTM gets a model token learned against the frozen ranker. A
model token only attends to the task tokens, never to other model tokens, so learning one token
(and, for a re-ranker, its own projection of PTM-specific tokens) leaves the scores of every old
PTM exactly as they were. :func:`add_model` does, for a zoo build folder and a checkpoint trained
on it:

1. features of the new PTM on the zoo's pool datasets, into the zoo's store
   (:func:`spider.pipeline.extract.extract_to_store`; existing entries are kept);
2. its labels on the training tasks, with the run's label source: its baselines on the label
   cache's tasks (:func:`spider.pipeline.label_reuse.derive_label_cache` reuses the old PTMs' raw
   scores and recomputes the Copeland aggregate over the M+1 PTMs, which is what Copeland labels
   need: they depend on the whole model set) and, where the run has a fine-tuning bank, its
   fine-tuning runs on the bank's tasks with the bank's protocol (cached in ``<zoo>/bank/runs``
   like the build's; the M+1-column table goes to ``<cache_dir>/bank-<hash>``, leaving the build's
   ``bank/`` as the build wrote it);
3. its token (and re-ranking projection) trained with the run's loss on the run's episodes
   over M+1 PTMs, everything else frozen; the run's static prior, if any, gives the new PTM its
   prior value, standardised with the old PTMs' statistics;
4. a new checkpoint ranking M+1 PTMs (``load_scorer`` / ``spider rank`` read it), written
   atomically; the input checkpoint is never overwritten.

The training settings come from the run's ``config.yaml`` (``<run_dir>/config.yaml`` beside
``<run_dir>/checkpoints/*.ckpt``, or ``config=``); the new checkpoint carries that config with the
M+1 PTMs (``spider.config``), so that another PTM can be added to it in turn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from spider.errors import ConfigError, SpiderError

__all__ = ["AddModelReport", "add_model", "default_output"]


@dataclass
class AddModelReport:
    """What :func:`add_model` did: the checkpoint written, stage times (s) and training numbers."""

    checkpoint: Path
    model: str
    num_models: int
    seconds: dict[str, float] = field(default_factory=dict)  # extract, bank, labels, train, total
    extracted: int = 0  # store entries written (0: all were there)
    bank_runs: int = 0  # fine-tuning runs computed (0: cached, or no bank)
    labelled: bool = False  # whether its baselines were computed (False: a cache held them)
    steps: int = 0
    final_loss: float = float("nan")
    label_cache: str = ""
    finetune_bank: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "checkpoint": str(self.checkpoint)}


def default_output(checkpoint: str | Path, model: str) -> Path:
    """``<dir>/<stem>+<model>.ckpt`` beside the input checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}+{model}.ckpt")


def add_model(zoo_dir: str | Path, checkpoint: str | Path, model: str, out: str | Path | None = None, *,
              config: str | Path | None = None, data_dir: str | Path | None = None, epochs: int | None = None,
              workers: int = 1, overwrite: bool = False, progress: bool = False) -> AddModelReport:
    """Add PTM ``model`` to the ranker ``checkpoint`` trained on the zoo built in ``zoo_dir``.

    Args:
        model: a PTM of the zoo's ``zoo.json`` or a registered :mod:`spider.zoo` model (real weights).
        out: the new checkpoint (default :func:`default_output`); never the input checkpoint.
        config: the run's ``config.yaml`` (default: the checkpoint's own data settings, else
            ``<run_dir>/config.yaml``).
        data_dir: the shared data folder (default ``SPIDER_DATA_DIR``), read only for missing work.
        epochs: training epochs of the new token (default: the run's ``trainer.max_epochs``).
        workers: processes for labelling and fine-tuning.
        overwrite: replace an existing ``out`` (never the input checkpoint).

    Raises:
        SpiderError: bad inputs (one line); nothing is written to ``out`` then.
    """
    from spider.modules.scorer_registry import load_scorer
    from spider.pipeline.build_manifest import read_manifest
    from spider.store import check_id

    started = time.perf_counter()
    zoo_dir, checkpoint = Path(zoo_dir), Path(checkpoint)
    check_id("model", model)
    out = Path(out) if out is not None else default_output(checkpoint, model)
    if out.resolve() == checkpoint.resolve():
        raise ConfigError(f"out {out}: is the input checkpoint; write the new checkpoint elsewhere")
    if out.exists() and not overwrite:
        raise ConfigError(f"out {out}: already exists (pass overwrite to replace it)")
    manifest = read_manifest(zoo_dir)
    scorer = load_scorer(checkpoint)
    info = dict(scorer.spider_info)
    _check_zoo(checkpoint, info, manifest, zoo_dir)
    names = [str(n) for n in info.get("model_names") or []]
    if model in names:
        raise ConfigError(f"model {model!r}: checkpoint {checkpoint} already ranks it")
    cfg = _run_config(checkpoint, info, config, zoo_dir, manifest)
    ref = _model_ref(model, manifest)
    report = AddModelReport(out, model, len(names) + 1)
    with torch.random.fork_rng():
        datamodule, params = _prepare(report, cfg, zoo_dir, manifest, names, ref, data_dir, workers, progress)
        prior = _prior_value(scorer, cfg, datamodule, params, ref, data_dir)
        dims = datamodule.model_dims
        grown = scorer.with_model(model, prior=prior, model_dim=int(dims[-1]))
        tic = time.perf_counter()
        epochs = int(cfg.trainer.max_epochs if epochs is None else epochs)
        if epochs < 1:
            raise ConfigError(f"epochs: expected an integer >= 1, got {epochs}")
        old_shapes = {n: p.shape for n, p in scorer.named_parameters()}
        learn = [n for n, p in grown.named_parameters() if p.shape != old_shapes.get(n, p.shape)]
        report.steps, report.final_loss = train_new_model(grown, datamodule, learn, epochs, seed=int(cfg.seed))
        report.seconds["train"] = time.perf_counter() - tic
    grown.eval()
    new_info = {**info, "hparams": _plain(dict(grown.hparams)), "model_names": [*names, model],
                "model_dims": [int(d) for d in dims], "config": _plain(cfg),
                "added": [*(info.get("added") or []),
                          {"model": model, "from": str(checkpoint), "epochs": epochs, "steps": report.steps,
                           "final_loss": report.final_loss, "label_source": str(cfg.data.label_source),
                           "ref": _plain(ref.to_dict())}]}
    from spider.io import write_bytes_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {k: v.detach().cpu() for k, v in grown.state_dict().items()}, "spider": new_info}
    write_bytes_atomic(out, lambda f: torch.save(state, f))
    report.seconds["total"] = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------------- checks


def _check_zoo(checkpoint: Path, info: dict, manifest: dict, zoo_dir: Path) -> None:
    zoo = info.get("zoo")
    if not isinstance(zoo, dict):
        raise ConfigError(f"checkpoint {checkpoint}: not trained on a zoo build (its 'spider' entry names no zoo); "
                          "add-model needs the zoo it was trained on")
    theirs = (zoo.get("recipe"), zoo.get("recipe_hash"))
    ours = (manifest.get("recipe"), manifest.get("recipe_hash"))
    if theirs != ours:
        raise ConfigError(f"checkpoint {checkpoint}: trained on zoo {theirs[0]!r} (recipe hash {theirs[1]}), "
                          f"not the zoo in {zoo_dir} ({ours[0]!r}, recipe hash {ours[1]})")


def _run_config(checkpoint: Path, info: dict, config: str | Path | None, zoo_dir: Path,
                manifest: dict) -> DictConfig:
    """The run's config: ``config``, else the one a previous add-model stored in the checkpoint,
    else ``<run_dir>/config.yaml``; pointed at ``zoo_dir``. Nothing in it is imported."""
    from spider.config import as_config, load_saved

    if config is None and isinstance(info.get("config"), dict):
        cfg = as_config(OmegaConf.create(info["config"]))
    else:
        path = Path(config) if config is not None else _default_config(checkpoint)
        if not path.is_file():
            raise ConfigError(f"config {path}: no such file (the training run's config.yaml; pass config=/--config)")
        cfg = load_saved(path)
    if cfg.data.zoo != manifest.get("recipe"):
        raise ConfigError(f"config: data.zoo is {cfg.data.zoo!r}, the zoo in {zoo_dir} is {manifest.get('recipe')!r}")
    cfg.data.zoo_dir = str(zoo_dir)
    return cfg


def _default_config(checkpoint: Path) -> Path:
    return checkpoint.resolve().parent.parent / "config.yaml"


def _model_ref(model: str, manifest: dict):
    """The :class:`~spider.pipeline.recipe.ModelRef` of a zoo PTM or a registered spider.zoo model."""
    from spider.pipeline.recipe import ModelRef, zoo_ref
    from spider.zoo import list_zoo_models

    keys = {f.name for f in fields(ModelRef)}
    for entry in manifest.get("models") or []:
        if isinstance(entry, dict) and entry.get("id") == model:
            values = {k: v for k, v in entry.items() if k in keys}
            for key in ("input_size", "mean", "std"):
                if values.get(key) is not None:
                    values[key] = tuple(values[key])
            ref = ModelRef(**values)
            if ref.kind == "timm" and not (ref.checkpoint and Path(ref.checkpoint).is_file()):
                raise ConfigError(f"model {model!r}: its checkpoint {ref.checkpoint} is missing (zoo.json)")
            return ref
    if model in list_zoo_models():
        return zoo_ref(model)
    known = sorted({e.get("id") for e in manifest.get("models") or [] if isinstance(e, dict)} | set(list_zoo_models()))
    raise ConfigError(f"model {model!r}: unknown (neither a PTM of the zoo's zoo.json nor a registered spider.zoo "
                      f"model; known: {', '.join(map(str, known))})")


# ------------------------------------------------------------------------- features and labels


def _prepare(report: AddModelReport, cfg: DictConfig, zoo_dir: Path, manifest: dict, names: list[str], ref: Any,
             data_dir: str | Path | None, workers: int, progress: bool):
    """Extract, fine-tune on the bank, label; returns the M+1-PTM datamodule (training tasks only)
    and the zoo's parameter counts."""
    from spider.run_inputs import build_datamodule, check_inputs, resolve_inputs

    old = resolve_inputs(cfg)
    data = old["data"]
    models = list(cfg.data.models if cfg.data.models is not None else data.get("models") or [])
    if models != names:
        raise ConfigError(f"config: data.models {models[:3]}... are not the checkpoint's models {names[:3]}... "
                          "(pass the run's own config.yaml)")
    pool = list(cfg.data.pool_datasets if cfg.data.pool_datasets is not None else data.get("pool_datasets") or [])
    recipe = _recipe(manifest)
    tic = time.perf_counter()
    report.extracted = _extract(recipe, Path(old["store"]), ref, pool, data_dir, progress)
    report.seconds["extract"] = time.perf_counter() - tic

    bank = cfg.data.finetune_bank if cfg.data.finetune_bank is not None else data.get("finetune_bank")
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else zoo_dir / "cache"
    tic = time.perf_counter()
    if bank is not None:
        bank, report.bank_runs = _extend_bank(recipe, zoo_dir, Path(bank), names, ref, cache_dir, data_dir, workers,
                                              progress)
        report.finetune_bank = str(bank)
    report.seconds["bank"] = time.perf_counter() - tic

    cfg.data.models = [*names, ref.id]
    cfg.data.finetune_bank = None if bank is None else str(bank)
    train_cfg = cfg.copy()
    # Training tasks only: the targets' ground truth has no column for the new PTM (so validation
    # targets the ranker trained on, data.val_targets_as_tasks, cannot teach the new token either).
    train_cfg.data.val_datasets, train_cfg.data.test_datasets = [], []
    train_cfg.data.val_targets_as_tasks = 0
    new = resolve_inputs(train_cfg)
    tic = time.perf_counter()
    datamodule = build_datamodule(train_cfg, new, progress=progress)
    if datamodule.model_names != [*names, ref.id]:  # (reads the store: resolves the label settings)
        raise ConfigError(f"config: the datamodule ranks {datamodule.model_names}, expected the checkpoint's models "
                          f"then {ref.id!r}")
    from spider.pipeline.label_reuse import derive_label_cache

    derived = derive_label_cache(datamodule.label_config, new["label_cache"], int(cfg.data.num_label_tasks),
                                 [old["label_cache"]], workers=workers, progress=progress)
    report.labelled = bool(derived.computed)
    report.label_cache = str(new["label_cache"])
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_inputs(datamodule)
    report.seconds["labels"] = time.perf_counter() - tic
    return datamodule, new.get("params") or {}


def _recipe(manifest: dict):
    from spider.pipeline.recipes import get_recipe

    recipe = get_recipe(manifest["recipe"])
    if recipe.hash != manifest.get("recipe_hash"):
        raise ConfigError(f"zoo.json: built with recipe {recipe.name!r} at hash {manifest.get('recipe_hash')}, the "
                          f"installed recipe has hash {recipe.hash}; rebuild the zoo (spider zoo build) first")
    return recipe


def _extract(recipe: Any, store_root: Path, ref: Any, pool: list[str], data_dir, progress: bool) -> int:
    """Store entries of ``ref`` on the pool datasets; returns how many were written."""
    from spider.pipeline.build import check_data
    from spider.pipeline.build_manifest import SPLIT
    from spider.pipeline.extract import extract_to_store
    from spider.store import FeatureStore

    store = FeatureStore(store_root)
    missing = [d for d in pool if not store.has(ref.id, d, SPLIT)]
    if not missing:
        return 0
    specs = {p.id: p for p in recipe.pool}
    unknown = [d for d in missing if d not in specs]
    if unknown:
        raise ConfigError(f"data.pool_datasets: {unknown[0]!r} is not a pool dataset of recipe {recipe.name!r}")
    data_dir = check_data(recipe, data_dir)
    prepared = ref.load(data_dir)
    for dataset in missing:
        view = specs[dataset].load(data_dir)
        extract_to_store(store, prepared, view.source(), dataset=dataset, split=SPLIT, model_id=ref.id,
                         batch_size=recipe.extract_batch_size, progress=progress)
    return len(missing)


def _extend_bank(recipe: Any, zoo_dir: Path, bank: Path, names: list[str], ref: Any, cache_dir: Path,
                 data_dir, workers: int, progress: bool) -> tuple[Path, int]:
    """The bank with a column for ``ref``: its runs (cached in ``<zoo>/bank/runs``, same protocol)
    on the bank's tasks, beside the old PTMs' columns, in ``<cache_dir>/bank-<hash>``."""
    from spider.datamodules.finetune_bank import BANK_MEASURES, open_bank, task_id
    from spider.datamodules.ground_truth_csv import GroundTruth, write_ground_truth
    from spider.datamodules.label_cache import identity_hash
    from spider.pipeline.bank import bank_jobs, split_task, write_specs
    from spider.pipeline.build import check_data
    from spider.pipeline.finetune import RunCache, run_ground_truth, run_hash, summarize

    old = open_bank(bank, names)
    settings, runs = recipe.bank, zoo_dir / "bank" / "runs"
    config, cache = settings.finetune, RunCache(runs)
    jobs = bank_jobs(old.specs, [ref], settings)
    need = {i for i, job in enumerate(jobs) if any(cache.get(job.target, ref.id, lr, s, run_hash(job, config)) is None
                                                   for lr in config.lrs for s in config.seeds)}
    if need:
        data_dir = check_data(recipe, data_dir)
        pool = {p.id: p.load(data_dir) for p in recipe.pool}
        jobs = [replace(job, views=split_task(old.specs[i], pool, i, settings)) if i in need else job
                for i, job in enumerate(jobs)]
    results = run_ground_truth(jobs, config, runs, data_dir=data_dir, workers=workers, progress=progress)
    summaries = summarize(results, config)
    tasks = [task_id(i) for i in range(old.num_tasks)]
    models = [*names, ref.id]
    key = identity_hash({"source": str(bank.resolve()), "models": models, "tasks": [s.to_json() for s in old.specs]})
    folder = cache_dir / f"bank-{key[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    write_specs(folder / "tasks.jsonl", old.specs)
    for measure in BANK_MEASURES:
        values = getattr(old, measure)
        if values is None:  # a bank built before the measure was recorded
            continue
        column = np.array([round(getattr(summaries[(t, ref.id)], measure), 4) for t in tasks])
        if measure == "accuracy" and not np.isfinite(column).all():  # test_nll: NaN = unlabelled pair
            raise SpiderError(f"{runs}: a fine-tuning run of {ref.id!r} gave a non-finite {measure}")
        write_ground_truth(folder / f"{measure}.csv", GroundTruth(tasks, models, np.column_stack([values, column])),
                           measure)
    return folder, sum(not r.cached for r in results)


def _prior_value(scorer: Any, cfg: DictConfig, datamodule: Any, params: dict, ref: Any, data_dir) -> float | None:
    """The new PTM's raw prior on the scale of the checkpoint's ``model_prior`` or ``rank_prior``
    (None without one).

    The prior is computed over the M+1 PTMs (for ``label_mean`` the Copeland labels change with
    the model set), then mapped affinely so that the old PTMs' values have the checkpoint's mean
    and std (the identity for ``finetune_mean``, whose old values do not change).
    """
    key = next((k for k in ("model_prior", "rank_prior") if hasattr(scorer, k)), None)
    if key is None:
        return None
    config_key = "model.prior" if key == "model_prior" else "data.rank_prior"
    name = OmegaConf.select(cfg, config_key)
    if name is None:
        raise ConfigError(f"config: {config_key} is null but the checkpoint has a static prior (another run's config?)")
    from spider.priors import prior_scores

    params = dict(params)
    if name == "param_count" and ref.id not in params:
        params[ref.id] = sum(p.numel() for p in ref.load(data_dir).model.parameters())
    try:
        raw = prior_scores(name, datamodule.prior_inputs(params))
    except SpiderError as err:
        raise ConfigError(f"config key '{config_key}': {err}") from None
    old = np.asarray([float(v) for v in scorer.hparams[key]], dtype=np.float64)
    now = raw[:-1]
    scale = now.std() if now.std() > 0 else 1.0
    return float(old.mean() + (raw[-1] - now.mean()) / scale * (old.std() if now.std() > 0 else 1.0))


# ------------------------------------------------------------------------------------- training


class _Scoring(nn.Module):
    """``scorer.score_batch`` as a module call, so that ``functional_call`` can swap its weights."""

    def __init__(self, scorer: nn.Module) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scorer.score_batch(batch)


def train_new_model(scorer: Any, datamodule: Any, grown: Sequence[str], epochs: int, *,
                    seed: int = 0) -> tuple[int, float]:
    """Train the last model's rows of the per-model parameters ``grown`` of ``scorer`` (its token,
    and a re-ranker's projection) on the datamodule's training episodes with the scorer's own loss
    and AdamW settings (constant learning rate); every other weight stays frozen, bit for bit.

    Returns:
        ``(steps, mean loss of the last epoch)``.

    Raises:
        SpiderError: a non-finite loss (nothing is changed then).
    """
    from spider.callbacks import seed_all

    m = scorer.num_models - 1
    frozen = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    rows = {n: nn.Parameter(frozen[n][m:].clone()) for n in grown}
    hp = scorer.hparams
    optimizer = torch.optim.AdamW(list(rows.values()), lr=hp.lr, weight_decay=hp.weight_decay)
    wrapper = _Scoring(scorer)
    was_training = scorer.training
    requires = {n: p.requires_grad for n, p in scorer.named_parameters()}
    for p in scorer.parameters():
        p.requires_grad_(False)
    seed_all(seed)
    scorer.train()  # dropout as in training
    loader = datamodule.train_dataloader()
    steps, losses = 0, []
    try:
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            losses = []
            for batch in loader:
                weights = {f"scorer.{n}": torch.cat([frozen[n][:m], rows[n]]) for n in grown}
                scores = torch.func.functional_call(wrapper, weights, (batch,))
                loss = scorer.loss_fn(scores, batch["target_scores"], batch["model_mask"])
                if not torch.isfinite(loss):
                    raise SpiderError(f"training the new model's token: non-finite loss {float(loss)} at epoch "
                                      f"{epoch}, step {steps} (labels or features of {scorer.hparams.model_names[-1]!r}?)")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
                losses.append(loss.item())
        with torch.no_grad():
            for n in grown:
                getattr(scorer, n)[m:] = rows[n]
    finally:
        for n, p in scorer.named_parameters():
            p.requires_grad_(requires[n])
        scorer.train(was_training)
    return steps, float(np.mean(losses)) if losses else float("nan")


def _plain(value: Any) -> Any:
    """Plain containers (``torch.load(weights_only=True)`` reads them back)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
