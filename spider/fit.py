"""Train a PTM ranker: ``python -m spider.fit [group=name ...] [key=value ...]``.

Examples::

    python -m spider.fit                                   # the real mini zoo (built first if missing)
    python -m spider.fit data=synthetic                    # no-data demo on a generated zoo
    python -m spider.fit --print-config model.lr=3e-4      # show the resolved config and exit
    python -m spider.fit data=tiny logger=csv trainer.max_epochs=2
    python -m spider.fit trainer.devices=2 trainer.strategy=ddp trainer.accelerator=cpu
    python -m spider.fit run_dir=runs/a resume=true trainer.max_epochs=20   # continue runs/a
    python -m spider.fit run_dir=runs/a validate_checkpoint=runs/a/checkpoints/last.ckpt

A run directory holds ``config.yaml`` (resolved config, written by rank 0), ``checkpoints/``
(``last.ckpt`` plus the per-epoch checkpoint), ``metrics.json`` (final validation metrics and the
results table) and the logger's files (``wandb/`` offline runs or ``csv/``).

Reproducibility: :class:`BatchSeed` re-seeds every RNG from ``(seed, epoch, batch, rank)`` before
each training batch and the datamodule's task draws are a pure function of ``(seed, epoch)``,
so a run resumed from ``last.ckpt`` (weights, optimizer, epoch) reaches the same weights as one
that was never interrupted.

Under ``strategy=ddp`` Lightning re-launches ``python -m spider.fit <same args>`` once per extra
device; everything before ``trainer.fit`` then runs again in those processes, after rank 0 has
built the zoo (or generated the synthetic one), so they only read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from spider.config import FitConfig, ModelConfig, as_config, compose, to_yaml
from spider.errors import ConfigError, SpiderError

__all__ = [
    "BatchSeed",
    "SpiderCheckpointInfo",
    "Throughput",
    "build_datamodule",
    "build_scorer",
    "build_trainer",
    "fit",
    "import_plugins",
    "format_results",
    "main",
    "prepare_store",
    "results_table",
    "validate_checkpoint",
]

CHECKPOINT_KEY = "spider"  # extra entry of every checkpoint: what rank.py needs to use it
PROTOCOLS = {"wtau_paper": None, "wtau_symmetric": True}  # name -> scipy weightedtau ``rank``


# ----------------------------------------------------------------------------- environment


class _DropLightningTips(logging.Filter):
    """Lightning advertises add-on packages on every run; keep the output to what matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def _quiet_lightning() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
        logger.addFilter(_DropLightningTips())
    # The scorer's validation metrics are torchmetrics objects that sync across processes in
    # compute(); Lightning cannot know that and suggests sync_dist for each of them.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/")
    # Lightning's own use of a torch API that torch deprecated; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def _env_rank() -> int:
    """Global rank known before the Trainer exists (set by launchers for child processes)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            try:
                return int(os.environ[key])
            except ValueError:
                pass
    return 0


def _set_threads(cfg: DictConfig) -> None:
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on all ``parts`` (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- data and model


def prepare_store(cfg: DictConfig) -> dict[str, Any]:
    """Resolve the store, ground-truth and label-cache paths; build or generate the zoo if needed.

    Returns ``{"store", "ground_truth", "label_cache"}`` (paths as strings; ground truth may be
    None); with ``data.zoo`` also ``"zoo"`` (``{"recipe", "dir", "recipe_hash"}``, recorded in
    checkpoints) and ``"data"`` (DataConfig fields the zoo fills, see :func:`_zoo_store`). The
    synthetic zoo is generated by rank 0 into a temporary folder renamed into place, so other
    processes (and concurrent runs) only ever see a complete zoo; they wait for it to appear.
    """
    data = cfg.data
    if data.zoo:
        return _zoo_store(cfg)
    cache_dir = Path(data.cache_dir) if data.cache_dir else Path(cfg.run_dir) / "cache"
    store, ground_truth = data.store, data.ground_truth
    if not store:
        if not data.synthetic.enabled:
            raise ConfigError("config key 'data.store': expected a feature-store folder (or data.synthetic.enabled=true)")
        zoo_dir = _synthetic_zoo(cache_dir, data.synthetic)
        store = str(zoo_dir / "store")
        ground_truth = ground_truth or str(zoo_dir / "ground_truth.csv")
    elif not Path(store).is_dir():
        raise ConfigError(f"config key 'data.store': no folder {store}")
    if ground_truth and not Path(ground_truth).is_file():
        raise ConfigError(f"config key 'data.ground_truth': no file {ground_truth}")
    label_cache = data.label_cache or str(cache_dir / f"labels-{_label_key(data, store)}")
    return {"store": store, "ground_truth": ground_truth, "label_cache": label_cache}


# DataConfig fields that do not change the labels of the task bank (the cache grows with
# num_label_tasks, keeping its first tasks), so runs differing only in them share one cache.
_NOT_LABEL_FIELDS = ("name", "zoo", "zoo_dir", "cache_dir", "label_cache", "ground_truth", "synthetic", "store",
                     "num_label_tasks", "tasks_per_epoch", "batch_size", "val_batch_size", "specific_models",
                     "num_workers", "label_workers", "label_device")


def _label_key(data: DictConfig, store: str) -> str:
    """Short hash of everything that defines the label cache, so that e.g. a sweep over task
    sizes gives every setting its own cache instead of a settings-mismatch error."""
    settings = {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if k not in _NOT_LABEL_FIELDS}
    settings["store"] = str(Path(store).resolve())
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# Settings of a zoo's ``data`` section (``zoo.json``) that name its data rather than define labels.
_ZOO_DATA_FIELDS = ("store", "ground_truth", "label_cache", "num_label_tasks", "target_datasets", "target_split")


def _zoo_store(cfg: DictConfig) -> dict[str, Any]:
    """Build the missing parts of the zoo ``data.zoo`` (rank 0; idempotent) and read its paths.

    The zoo fills ``models``, ``pool_datasets`` and ``target_datasets`` where the config leaves
    them null. Labels live in ``<cache_dir>/labels-<hash of the settings>`` (``cache_dir``
    defaulting to ``<zoo_dir>/cache``); when every label-defining setting of ``cfg.data`` equals
    the zoo's, that cache starts as a copy of the one the build made, so no task is labelled
    twice while the build's own output stays untouched by fits.

    Raises:
        ConfigError: unknown recipe, or ``data.store``/``data.ground_truth`` set alongside it.
        DataFileError: the build needs data files that are missing (one line naming them).
    """
    from spider.zoo.build import build_zoo, default_out, read_manifest
    from spider.zoo.manifest import DataFileError
    from spider.zoo.minizoo import list_recipes

    data = cfg.data
    if data.zoo not in list_recipes():
        raise ConfigError(f"config key 'data.zoo': unknown zoo recipe {data.zoo!r}; "
                          f"known: {', '.join(list_recipes())}")
    for key in ("store", "ground_truth"):
        if data[key]:
            raise ConfigError(f"config key 'data.{key}': set by the zoo {data.zoo!r}; leave it null "
                              "or set data.zoo=null")
    zoo_dir = Path(data.zoo_dir) if data.zoo_dir else default_out(data.zoo)
    if (zoo_dir / "zoo.json").is_file():
        _check_zoo_recipe(read_manifest(zoo_dir), data.zoo, zoo_dir)
    if _env_rank() == 0:  # DDP children start after rank 0 built it: they only read it
        try:
            report = build_zoo(data.zoo, zoo_dir, progress=True)
        except DataFileError as err:
            raise DataFileError(f"{err}; without the data, `python -m spider.fit data=synthetic` runs the "
                                "no-data demo on a generated zoo") from None
        print(f"zoo {data.zoo} in {zoo_dir}: {'built' if report.computed else 'up to date'}", file=sys.stderr)
    manifest = read_manifest(zoo_dir)
    _check_zoo_recipe(manifest, data.zoo, zoo_dir)
    section = manifest["data"]
    if section["general"] != data.general:
        raise ConfigError(f"config key 'data.general': zoo {data.zoo!r} calls its general encoder "
                          f"{section['general']!r}, got {data.general!r}")
    fill = {k: section[k] for k in ("models", "pool_datasets", "target_datasets") if data[k] is None}
    cache_dir = Path(data.cache_dir) if data.cache_dir else zoo_dir / "cache"
    label_cache = data.label_cache or str(cache_dir / f"labels-{_label_key(data, section['store'])}")
    settings = {**OmegaConf.to_container(data, resolve=True), **fill}
    same_labels = data.min_class_size is None and all(
        settings.get(k) == v for k, v in section.items() if k not in _ZOO_DATA_FIELDS)
    if same_labels and not data.label_cache and _env_rank() == 0:
        _seed_label_cache(Path(section["label_cache"]), Path(label_cache))
    return {"store": section["store"], "ground_truth": section["ground_truth"], "label_cache": label_cache,
            "data": fill, "zoo": {"recipe": data.zoo, "dir": str(zoo_dir.resolve()),
                                  "recipe_hash": manifest.get("recipe_hash")}}


def _seed_label_cache(source: Path, target: Path) -> None:
    """Copy a complete label cache (without its target scores) to ``target`` if that is new."""
    import shutil

    if target.exists() or not (source / "labels.json").is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("targets", ".*"))
    try:
        os.replace(tmp, target)
    except OSError:  # another run seeded it first (same bytes)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_zoo_recipe(manifest: Mapping[str, Any], recipe: str, zoo_dir: Path) -> None:
    if manifest.get("recipe") != recipe:
        raise ConfigError(f"config key 'data.zoo_dir': {zoo_dir} holds zoo {manifest.get('recipe')!r}, not {recipe!r}")


def _synthetic_zoo(cache_dir: Path, options: DictConfig) -> Path:
    from spider.synthetic import make_synthetic_zoo

    kwargs = {k: v for k, v in OmegaConf.to_container(options).items() if k != "enabled"}
    # The folder name encodes the generator settings so that a changed config never reuses a
    # zoo generated with other settings.
    key = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:12]
    zoo_dir = cache_dir / f"synthetic-{key}"
    done = zoo_dir / "ground_truth.csv"
    if done.is_file():
        return zoo_dir
    if _env_rank() != 0:  # rank 0 generates it; wait (it takes seconds)
        deadline = time.monotonic() + 600
        while not done.is_file():
            if time.monotonic() > deadline:
                raise SpiderError(f"synthetic zoo {zoo_dir}: rank 0 did not finish generating it within 10 minutes")
            time.sleep(0.5)
        return zoo_dir
    tmp = cache_dir / f".synthetic-{key}.tmp-{os.getpid()}"
    make_synthetic_zoo(tmp, **kwargs)
    try:
        os.replace(tmp, zoo_dir)
    except OSError:  # another run finished first: keep theirs (same settings, same bytes)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return zoo_dir


def build_datamodule(cfg: DictConfig, paths: Mapping[str, Any], *, progress: bool = True):
    """The :class:`EpisodeDataModule` of ``cfg.data`` (fields passed by name)."""
    from spider.datamodules.episodes import EpisodeDataModule

    options = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("name", "zoo", "zoo_dir", "cache_dir", "synthetic", "store", "label_cache", "ground_truth"):
        options.pop(key)
    for key, value in (paths.get("data") or {}).items():  # what a zoo fills
        if options.get(key) is None:
            options[key] = value
    return EpisodeDataModule(paths["store"], paths["label_cache"], paths["ground_truth"],
                             progress=progress, **options)


def _scorer_kwargs(cfg_model: DictConfig, cls: type) -> dict[str, Any]:
    """Constructor arguments from ``cfg.model`` for the chosen scorer class.

    Fields the class does not take must keep the schema default: a user setting one (e.g.
    ``model.specific_mode`` for a plain token scorer) gets an error rather than silence.
    """
    values = OmegaConf.to_container(cfg_model, resolve=True)
    for key in ("name", "scorer", "rerank_topk"):
        values.pop(key)
    accepted = _accepted_arguments(cls)
    kwargs = {}
    for key, value in values.items():
        if accepted is None or key in accepted:
            kwargs[key] = value
        elif value != _field_default(key):
            raise ConfigError(f"config key 'model.{key}': scorer {cfg_model.scorer!r} does not take it")
    return kwargs


def _field_default(key: str) -> Any:
    spec = ModelConfig.__dataclass_fields__[key]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _accepted_arguments(cls: type) -> Optional[set[str]]:
    """Names ``cls.__init__`` accepts, following ``**kwargs`` up the MRO; None = anything."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if klass.__module__.startswith(("lightning", "torch")):
            return None
    return None


def build_scorer(cfg: DictConfig, datamodule: Any):
    """The registered scorer ``cfg.model.scorer`` sized for the datamodule's zoo."""
    from spider.modules import get_scorer

    cls = get_scorer(cfg.model.scorer)
    kwargs = _scorer_kwargs(cfg.model, cls)
    accepted = _accepted_arguments(cls)
    extras = {"model_names": datamodule.model_names, "target_names": datamodule.target_names,
              "model_dims": datamodule.model_dims}
    for key, value in extras.items():
        if accepted is None or key in accepted:
            kwargs[key] = value
    if cfg.model.scorer == "reranker" and cfg.data.specific_models == 0:
        print("warning: model.scorer=reranker with data.specific_models=0 trains no specific "
              "projections; set data.specific_models (e.g. 2)", file=sys.stderr)
    return cls(num_models=datamodule.num_models, task_dim=datamodule.general_dim, **kwargs)


# ----------------------------------------------------------------------------- callbacks


def _callback_base():
    import lightning as L

    return L.Callback


class BatchSeed(_callback_base()):  # type: ignore[misc]
    """Re-seed python/numpy/torch RNGs from ``(seed, epoch, batch, rank)`` before each training batch.

    Lightning does not checkpoint RNG states, and the DataLoader draws from the global RNG when
    its iterator is created, which a resumed run does at a different moment than an
    uninterrupted one. Seeding per batch makes dropout masks (and anything else random in a
    training step) depend only on the batch's position, so a resumed run repeats them exactly.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        _seed_all(_derive_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


class QuietLightning(_callback_base()):  # type: ignore[misc]
    """Applies :func:`_quiet_lightning` in every process (ddp_spawn children start fresh)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        _quiet_lightning()


class SpiderCheckpointInfo(_callback_base()):  # type: ignore[misc]
    """Adds ``checkpoint["spider"]``: the scorer's registry name, its constructor arguments, the
    zoo's model ids and dims and the general encoder id, as plain values (``weights_only`` safe)."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = dict(info)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.info


class SaveConfig(_callback_base()):  # type: ignore[misc]
    """Writes the resolved config to ``<run_dir>/config.yaml`` on global rank 0 only."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.text = to_yaml(cfg)
        self.path = run_dir / "config.yaml"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer.is_global_zero and stage == "fit":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_text_atomic(self.path, self.text)


class Throughput(_callback_base()):  # type: ignore[misc]
    """Training episodes per second (all ranks together), measured over each epoch's batches."""

    def __init__(self) -> None:
        self.episodes = 0
        self.seconds = 0.0
        self._start: Optional[float] = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()
        self._epoch_episodes = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._epoch_episodes += int(batch["task_tokens"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._start is not None:
            seconds = time.perf_counter() - self._start
            self.seconds += seconds
            self.episodes += self._epoch_episodes
            self._start = None
            if seconds > 0:  # logged, so that it also reaches loggers and ddp_spawn's parent
                pl_module.log("train/episodes_per_s", self._epoch_episodes / seconds)

    @property
    def episodes_per_second(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------- trainer


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    name = cfg.logger.name
    if name == "none":
        return []
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="csv")]
    from lightning.pytorch.loggers import WandbLogger

    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    # An explicit WANDB_MODE (e.g. "disabled" in tests, "online" for agents) decides; otherwise
    # logger.offline does.
    offline = bool(cfg.logger.offline) and "WANDB_MODE" not in os.environ
    return [WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, name=cfg.logger.run_name,
                        tags=list(cfg.logger.tags), save_dir=str(run_dir), offline=offline,
                        config=OmegaConf.to_container(cfg, resolve=True))]


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: Sequence[Any] = (), *, for_fit: bool = True):
    """A Lightning Trainer for ``cfg.trainer`` writing into ``run_dir``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    t = cfg.trainer
    all_callbacks = list(callbacks)
    if for_fit:
        # One checkpoint per epoch (overwritten) plus last.ckpt, in a fixed folder for resume.
        all_callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="epoch{epoch:03d}",
                                             auto_insert_metric_name=False, save_last=True, save_top_k=1))
    if t.enable_progress_bar and sys.stderr.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        all_callbacks.append(RichProgressBar(leave=True))
    strategy: Any = t.strategy
    if strategy in ("ddp", "ddp_spawn") and str(t.accelerator) == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo",
                               start_method="spawn" if strategy == "ddp_spawn" else "popen")
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=strategy,
        num_nodes=t.num_nodes, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, gradient_clip_val=t.gradient_clip_val,
        check_val_every_n_epoch=t.check_val_every_n_epoch, num_sanity_val_steps=t.num_sanity_val_steps,
        enable_progress_bar=bool(t.enable_progress_bar) and sys.stderr.isatty(),
        enable_model_summary=False, callbacks=all_callbacks,
        logger=build_loggers(cfg, run_dir) if for_fit else False,
        default_root_dir=str(run_dir),
    )


# ----------------------------------------------------------------------------- results table


@torch.no_grad()
def results_table(model: Any, datamodule: Any, *, rerank_topk: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Weighted tau per target of the scorer, every baseline and the aggregate (one process).

    Iterates the datamodule's validation episodes in this process (no sharding), averages each
    task's weighted tau per target dataset and over targets (key ``"mean"``).

    Returns:
        ``table[protocol][method][target]``: protocol in ``wtau_paper`` (scipy ``rank=None``,
        weighted by the true ranking) and ``wtau_symmetric`` (``rank=True``); method ``scorer``
        (plus ``rerank@k`` when ``rerank_topk`` > 0), then ``datamodule.baseline_names``.
    """
    from spider.metrics.functional import weighted_tau

    datamodule.setup("validate")
    loader = datamodule.val_dataloader()
    targets = datamodule.target_names
    methods = ["scorer"] + ([f"rerank@{rerank_topk}"] if rerank_topk > 0 else []) + list(datamodule.baseline_names)
    per_task: dict[str, dict[str, dict[str, list[float]]]] = {
        p: {m: {t: [] for t in targets} for m in methods} for p in PROTOCOLS
    }
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            predictions = {"scorer": model(batch["task_tokens"], batch["task_mask"])}
            if rerank_topk > 0:
                predictions[f"rerank@{rerank_topk}"] = _reranked(model, datamodule, batch, rerank_topk)
            for k, name in enumerate(datamodule.baseline_names):
                predictions[name] = batch["baseline_scores"][:, k]
            truth, truth_mask = batch["truth"], batch["truth_mask"]
            for name, pred in predictions.items():
                mask = truth_mask & torch.isfinite(pred)
                for protocol, rank in PROTOCOLS.items():
                    values = weighted_tau(truth, torch.nan_to_num(pred), rank=rank, mask=mask)
                    for t, value in zip(batch["target_index"].tolist(), values.tolist()):
                        per_task[protocol][name][targets[t]].append(value)
    finally:
        model.train(was_training)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for protocol, by_method in per_task.items():
        table[protocol] = {}
        for name, by_target in by_method.items():
            row = {t: _nanmean(v) for t, v in by_target.items()}
            row["mean"] = _nanmean([v for v in row.values()])
            table[protocol][name] = row
    return table


def _reranked(model: Any, datamodule: Any, batch: Mapping[str, torch.Tensor], topk: int) -> torch.Tensor:
    """Rank-valued scores [B, M] (M-1 = best) of the re-ranked order: the general ranking's
    top-k re-ordered by their specific scores, then the others in general order."""
    general = model(batch["task_tokens"], batch["task_mask"])
    num_models = general.shape[1]
    order = torch.argsort(general, dim=1, descending=True, stable=True)
    top = order[:, : min(topk, num_models)]
    specific = datamodule.specific_tokens_for(dict(batch), top)
    mixed = model(batch["task_tokens"], batch["task_mask"], top, specific)
    by_specific = torch.argsort(torch.gather(mixed, 1, top), dim=1, descending=True, stable=True)
    order = torch.cat([torch.gather(top, 1, by_specific), order[:, top.shape[1]:]], dim=1)
    values = torch.arange(num_models - 1, -1, -1, device=general.device, dtype=general.dtype)
    return torch.empty_like(general).scatter_(1, order, values.expand_as(general).contiguous())


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def format_results(table: Mapping[str, Mapping[str, Mapping[str, float]]], *, title: str = "") -> str:
    """The results table as plain text (rich-rendered): one block per protocol, methods as rows,
    target datasets (then their mean) as columns."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False, color_system=None)
    for protocol, by_method in table.items():
        columns = list(next(iter(by_method.values())).keys()) if by_method else []
        rich_table = Table(title=f"{title}{protocol}" if title else protocol)
        rich_table.add_column("method")
        for column in columns:
            rich_table.add_column(column, justify="right")
        for method, row in by_method.items():
            rich_table.add_row(method, *(_fmt(row[c]) for c in columns))
        console.print(rich_table)
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:+.3f}"


# ----------------------------------------------------------------------------- entry points


def import_plugins(modules: Sequence[str]) -> None:
    """Import user modules whose decorators register scorers, losses or baselines."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import module {name!r} ({err})") from None


def fit(cfg: DictConfig | FitConfig | dict | None = None) -> dict[str, Any]:
    """Train (or resume) the configured scorer, validate it and build the results table.

    Args:
        cfg: a composed config (:func:`spider.config.compose`), a :class:`FitConfig` or a nested
            dict of overrides of the schema defaults.

    Returns:
        ``{"val": {metric: value}, "table": results_table(...) or {}, "episodes_per_second":
        float, "checkpoint": path of last.ckpt, "epochs": completed epochs}``; rank 0 also
        writes it to ``<run_dir>/metrics.json``. Every rank returns the same ``val`` values.
    """
    cfg = as_config(cfg)
    import_plugins(cfg.imports)
    _quiet_lightning()
    _set_threads(cfg)
    if cfg.validate_checkpoint:
        return validate_checkpoint(cfg, cfg.validate_checkpoint)
    import lightning as L

    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    paths = prepare_store(cfg)
    datamodule = build_datamodule(cfg, paths, progress=_env_rank() == 0)
    _seed_all(cfg.seed)  # identical initial weights whatever the datamodule consumed
    model = build_scorer(cfg, datamodule)
    throughput = Throughput()
    info = _checkpoint_info(cfg, model, datamodule, paths.get("zoo"))
    trainer = build_trainer(cfg, run_dir, [BatchSeed(cfg.seed), SpiderCheckpointInfo(info),
                                           SaveConfig(cfg, run_dir), throughput, QuietLightning()])
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if cfg.resume:
        if last.is_file():
            ckpt_path = str(last)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        elif _env_rank() == 0:
            print(f"resume: no {last} yet; starting from scratch", file=sys.stderr)
    elif last.is_file():
        if not cfg.overwrite:
            raise ConfigError(f"config key 'run_dir': {run_dir} already holds a run (checkpoints/last.ckpt); pass "
                              "resume=true to continue it, overwrite=true to start again, or another run_dir")
        if _env_rank() == 0:  # before DDP children start: they must not see the old checkpoints
            import shutil

            shutil.rmtree(run_dir / "checkpoints")
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    val = _validate(trainer, model, datamodule)
    result: dict[str, Any] = {
        "val": val,
        "episodes_per_second": _throughput(throughput, trainer),
        "epochs": int(trainer.current_epoch),
        "checkpoint": str(last),
        "table": {},
    }
    if trainer.is_global_zero:
        if cfg.results_table and datamodule.target_names:
            result["table"] = results_table(model, datamodule, rerank_topk=_rerank_topk(cfg, model))
            print(format_results(result["table"]))
        print(f"training throughput: {result['episodes_per_second']:.1f} episodes/s "
              f"({trainer.world_size} process(es)); checkpoint: {last}")
        _write_text_atomic(run_dir / "metrics.json", json.dumps(_jsonable(result), indent=2))
    return result


def validate_checkpoint(cfg: DictConfig | FitConfig | dict, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """Validate a saved checkpoint with the configured data and trainer (no training).

    Returns ``{"val": {metric: value}, "table": ..., "checkpoint": path}`` and, on rank 0,
    writes ``<run_dir>/metrics-validate.json``.
    """
    cfg = as_config(cfg)
    _quiet_lightning()
    _set_threads(cfg)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"config key 'validate_checkpoint': no file {checkpoint}")
    run_dir = Path(cfg.run_dir)
    paths = prepare_store(cfg)
    datamodule = build_datamodule(cfg, paths, progress=_env_rank() == 0)
    model = load_scorer(checkpoint)
    trainer = build_trainer(cfg, run_dir, [QuietLightning()], for_fit=False)
    val = _validate(trainer, model, datamodule)
    result: dict[str, Any] = {"val": val, "checkpoint": str(checkpoint), "table": {}}
    if trainer.is_global_zero:
        if cfg.results_table and datamodule.target_names:
            result["table"] = results_table(model, datamodule, rerank_topk=_rerank_topk(cfg, model))
            print(format_results(result["table"]))
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(run_dir / "metrics-validate.json", json.dumps(_jsonable(result), indent=2))
    return result


def load_scorer(checkpoint: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild a scorer from a checkpoint written by :func:`fit` (``torch.load(weights_only=True)``)."""
    from spider.modules import get_scorer

    try:
        state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {checkpoint}: no such file") from None
    except Exception as err:  # unpickling errors come in many types
        raise ConfigError(f"checkpoint {checkpoint}: cannot load with weights_only=True ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    info = state.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or "scorer" not in info:
        raise ConfigError(f"checkpoint {checkpoint}: no '{CHECKPOINT_KEY}' entry (not written by spider.fit)")
    import_plugins(info.get("imports", []))  # a user scorer registers itself on import
    cls = get_scorer(info["scorer"])
    model = cls(**info["hparams"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    model.spider_info = info
    return model


def _checkpoint_info(cfg: DictConfig, model: Any, datamodule: Any,
                     zoo: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    hparams = {k: _plain(v) for k, v in dict(model.hparams).items()}
    return {
        # {"recipe", "dir", "recipe_hash"} of the zoo trained on (None: a plain store), so that
        # spider.rank --images can instantiate its general encoder and PTMs.
        "zoo": _plain(dict(zoo)) if zoo else None,
        "scorer": cfg.model.scorer,
        "imports": list(cfg.imports),
        "hparams": hparams,
        "model_names": list(datamodule.model_names),
        "model_dims": [int(d) for d in datamodule.model_dims],
        "general": cfg.data.general,
        "general_dim": int(datamodule.general_dim),
        "target_names": list(datamodule.target_names),
        "seed": int(cfg.seed),
    }


def _plain(value: Any) -> Any:
    """Containers of plain Python values only (safe for ``torch.load(weights_only=True)``)."""
    if isinstance(value, (DictConfig,)) or OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _rerank_topk(cfg: DictConfig, model: Any) -> int:
    from spider.modules import ReRanker

    return int(cfg.model.rerank_topk) if isinstance(model, ReRanker) else 0


def _throughput(throughput: Throughput, trainer: Any) -> float:
    if math.isfinite(throughput.episodes_per_second):
        return throughput.episodes_per_second
    # ddp_spawn: the callback counted in the spawned processes; the parent has the logged value.
    value = trainer.callback_metrics.get("train/episodes_per_s")
    return float(value) if value is not None else float("nan")


def _validate(trainer: Any, model: Any, datamodule: Any) -> dict[str, float]:
    if not datamodule.target_names:
        return {}
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


USAGE = """usage: python -m spider.fit [--print-config] [group=name ...] [key=value ...]

Train a PTM ranker. Groups (files in configs/<group>/): data, model, trainer, logger.
Keys: any field of the config (see --print-config), e.g. model.lr=3e-4 trainer.devices=2
run_dir=runs/x resume=true validate_checkpoint=PATH logger=csv.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    print_config = "--print-config" in argv
    overrides = [a for a in argv if a != "--print-config"]
    unknown = [a for a in overrides if a.startswith("-")]
    try:
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; options are --print-config and key=value overrides")
        cfg = compose(overrides)
        if print_config or cfg.print_config:
            print(to_yaml(cfg), end="")
            return 0
        fit(cfg)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
