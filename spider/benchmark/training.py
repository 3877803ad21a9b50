"""Model Spider fits for a benchmark and their rankings of every target.

Every fit composes the shipped config of the zoo's recipe (``configs/data/<file>.yaml`` whose
``zoo`` is the recipe) and overrides only what a benchmark varies (:class:`FitSpec`), so the
report measures the configuration users get. Fits run through :func:`spider.train.train`; a fit
whose resolved config and zoo recipe hash are unchanged is reused (``report-done.json`` beside its
checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from spider.benchmark.inputs import ReportError, Zoo

__all__ = ["FitSpec", "Refit", "ShippedSettings", "data_config_name", "fit_config", "rank_targets", "shipped_settings",
           "train_scorer"]


@dataclass(frozen=True)
class FitSpec:
    """One scorer to train: what a benchmark varies; everything else is the shipped config's."""

    scorer: str = "token"  # "token" (general tokens) or "reranker"
    label_source: str = "copeland"
    prior: Optional[str] = None  # a static prior added to the scores (model.prior)
    seed: int = 0
    val_tasks: int = 0  # data.val_targets_as_tasks: 0 for every fit that decides something

    @property
    def name(self) -> str:
        extra = f"-valtasks{self.val_tasks}" if self.val_tasks else ""
        return f"{self.scorer}-{self.label_source}-prior{self.prior or 'none'}{extra}-seed{self.seed}"

    @property
    def setting(self) -> str:
        """The label-source ablation's name of this setting (seed left out)."""
        return f"{self.label_source}" + (f" + prior {self.prior}" if self.prior else "")


def data_config_name(recipe: str) -> str:
    """The shipped data config (``configs/data/<name>.yaml``) of zoo recipe ``recipe``."""
    from omegaconf import OmegaConf

    from spider.config import config_dir

    for path in sorted((config_dir() / "data").glob("*.yaml")):
        if OmegaConf.load(path).get("zoo") == recipe:
            return path.stem
    raise ReportError(f"no configs/data/*.yaml has zoo: {recipe} (the report trains with a recipe's shipped config)")


@dataclass(frozen=True)
class ShippedSettings:
    """What a recipe's shipped config decides that the report's ablations revisit: the setting each
    ablation keeps unless validation beats it firmly (:func:`spider.benchmark.methods.pick_winner`)."""

    label_source: str
    prior: Optional[str]  # model.prior
    rank_prior: Optional[str]
    rank_prior_weight: float
    ensemble_rank_prior_weight: Optional[float]  # None: rank_prior_weight
    history_tokens: Optional[float] = None  # std of the model tokens' start from the bank; None: random
    val_targets_as_tasks: int = 0  # the shipped ranker's last step (0: it trains on the bank only)

    @property
    def setting(self) -> str:
        """The label-source ablation's name of the shipped setting."""
        return FitSpec("token", self.label_source, self.prior).setting

    @property
    def token_start(self) -> str:
        """How the shipped scorers' model tokens start, in words."""
        return ("at random" if self.history_tokens is None
                else f"from the fine-tuning history, std {self.history_tokens:g} (`data.history_tokens`)")


def shipped_settings(zoo: Zoo) -> ShippedSettings:
    """The shipped config of ``zoo``'s recipe, as composed for a user (``data=<its file>``)."""
    from spider.config import compose

    cfg = compose([f"data={data_config_name(zoo.name)}"])
    ensemble = cfg.data.get("ensemble_rank_prior_weight")
    history = cfg.data.get("history_tokens")
    return ShippedSettings(str(cfg.data.label_source), cfg.model.prior, cfg.data.rank_prior,
                           float(cfg.data.rank_prior_weight), None if ensemble is None else float(ensemble),
                           None if history is None else float(history), int(cfg.data.val_targets_as_tasks))


@dataclass(frozen=True)
class Refit:
    """The shipped ranker of one seed and the fit that judges it. ``decide`` trained on the bank
    only: it ranks the validation targets (honestly) and every decision is made on them. ``ship``
    is the same setting with the validation targets among its training tasks
    (``data.val_targets_as_tasks``), what users get: it ranks the test targets."""

    decide: Path
    ship: Path


def fit_config(zoo: Zoo, spec: FitSpec, work: Path, *, max_epochs: Optional[int] = None,
               specific_models: int = 3) -> Any:
    """The composed config of one fit (its run folder: ``<work>/runs/<spec.name>``)."""
    from spider.config import compose

    overrides = [f"data={data_config_name(zoo.name)}", f"data.zoo_dir={zoo.root.resolve()}",
                 f"data.cache_dir={work / 'cache'}", f"data.label_source={spec.label_source}",
                 f"data.val_targets_as_tasks={spec.val_tasks}",
                 f"model={spec.scorer}", f"model.prior={spec.prior or 'null'}", f"seed={spec.seed}",
                 "trainer=cpu", "trainer.enable_progress_bar=false", "logger=none", "results_table=false",
                 f"run_dir={work / 'runs' / spec.name}", "overwrite=true"]
    if spec.prior:  # a prior trained with takes the place of the config's rank prior (one per scorer)
        overrides.append("data.rank_prior=null")
    if spec.scorer == "reranker":
        overrides.append(f"data.specific_models={specific_models}")
    if max_epochs is not None:
        overrides.append(f"trainer.max_epochs={max_epochs}")
    cfg = compose(overrides)
    # Validation every epoch only feeds checkpoint callbacks the report does not use.
    cfg.trainer.check_val_every_n_epoch = int(cfg.trainer.max_epochs) + 1
    return cfg


def train_scorer(zoo: Zoo, spec: FitSpec, work: Path, *, log: Callable[[str], None] = lambda _: None,
                 **options: Any) -> Path:
    """Train (or reuse) one scorer; returns its ``last.ckpt``."""
    from omegaconf import OmegaConf

    from spider.config import RANK_WEIGHT_KEYS
    from spider.io import write_text_atomic
    from spider.train import train

    cfg = fit_config(zoo, spec, work, **options)
    run_dir = Path(cfg.run_dir)
    done, ckpt = run_dir / "report-done.json", run_dir / "checkpoints" / "last.ckpt"
    # The recipe hash covers what the config does not name: a rebuilt bank or other ground truth.
    # The rank-prior weights shape no weight (the report ranks with explicit ones): not part of it.
    trained = OmegaConf.to_container(cfg, resolve=True)
    for key in RANK_WEIGHT_KEYS:
        trained["data"].pop(key, None)
    # Added after fits were cached: at null (a random start) a fit is what it was without the key.
    if trained["data"].get("history_tokens") is None:
        trained["data"].pop("history_tokens", None)
    if not trained["data"].get("val_targets_as_tasks"):
        trained["data"].pop("val_targets_as_tasks", None)
    identity = json.dumps({"config": trained,
                           "recipe_hash": zoo.manifest.get("recipe_hash")}, sort_keys=True, default=str)
    if done.is_file() and done.read_text() == identity and ckpt.is_file():
        return ckpt
    start = time.perf_counter()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # "GPU available ..." once per fit drowns the report's log
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            metrics, _ = train(cfg)
    finally:
        lightning_log.setLevel(level)
    write_text_atomic(done, identity)
    log(f"trained {spec.name} in {time.perf_counter() - start:.0f} s")
    return Path(metrics["checkpoint"])


def rank_targets(ckpt: Path, zoo: Zoo, ks: Sequence[int], extraction: Mapping[str, Mapping[str, float]],
                 rerankers: Sequence[Path] = (), weight: Optional[float] = None,
                 rank_prior_weight: Optional[float] = None) -> dict[int, dict[str, Any]]:
    """Rank every target with a trained scorer: general tokens (k = 0) and re-ranking of the top k.

    ``ckpt`` is one checkpoint or a list (a seed ensemble), each one possibly a :class:`Refit`
    (validation targets ranked by its ``decide`` fit, test targets by its ``ship`` fit); with ``rerankers`` (ReRanker
    checkpoints, a seed ensemble) the top k of that ranking are re-scored and fused by them
    (:class:`spider.modules.ReRanking`; ``weight``: their fusion weight, None = the first
    re-ranker's ``rerank_weight``), else ``ckpt`` must be a ReRanker to re-rank (k > 0).
    ``rank_prior_weight``: the scorers' shrinkage towards their rank prior (None: their own).

    Returns ``{k: {"pred": [T, M], "seconds": [T], "extract_seconds": [T], "score_seconds": [T],
    "models": [[PTM ids re-scored] per target]}}`` over ``zoo.targets``; time = the general
    encoder's extraction (+ the k re-scored PTMs') + the scorer's token, scoring and re-rank stages.
    """
    from spider.evaluate import rank_values
    from spider.rank import rank_task
    from spider.rank_core import load_ranker

    import torch

    many = isinstance(ckpt, (list, tuple))
    fits = list(ckpt) if many else [ckpt]
    if any(isinstance(c, Refit) for c in fits):
        if not all(isinstance(c, Refit) for c in fits):
            raise ReportError("rank_targets: an ensemble mixes Refit pairs and plain checkpoints")
        runs = [rank_targets([getattr(c, part) for c in fits] if many else getattr(ckpt, part), zoo, ks, extraction,
                             rerankers, weight, rank_prior_weight) for part in ("decide", "ship")]
        test = np.array([t in zoo.test_targets for t in zoo.targets])
        for k, rec in runs[0].items():
            for key, values in rec.items():
                shipped = runs[1][k][key]
                rec[key] = (np.where(test[:, None], shipped, values) if key == "pred"
                            else [s if is_test else v for v, s, is_test in zip(values, shipped, test)])
        return runs[0]

    model = load_ranker(list(ckpt) if isinstance(ckpt, (list, tuple)) else ckpt, rerankers, weight,
                        rank_prior_weight=rank_prior_weight)
    names = list(model.spider_info["model_names"])
    if names != zoo.models:
        raise ReportError(f"{ckpt}: ranks {names}, the zoo lists {zoo.models}")
    out: dict[int, dict[str, Any]] = {}
    for k in ks:
        rec: dict[str, Any] = {"pred": [], "seconds": [], "extract_seconds": [], "score_seconds": [], "models": []}
        for target in zoo.targets:
            result = rank_task(model, zoo.store, target, general=zoo.general, rerank_topk=k)
            if k == 0:
                pred = np.array([result.general_scores[m] for m in zoo.models])
            else:
                order = torch.tensor([[zoo.models.index(m) for m in result.models]])
                pred = rank_values(order)[0].numpy()
            rescored = [m for m, t in zip(result.models, result.tokens) if t == "specific"]
            ms = result.timings_ms
            score = (ms["tokens"] + ms["score"] + ms.get("rerank", 0.0)) / 1000.0
            extract_s = extraction[zoo.general][target] + sum(extraction[m][target] for m in rescored)
            for key, value in (("pred", pred), ("score_seconds", score), ("extract_seconds", extract_s),
                               ("seconds", score + extract_s), ("models", rescored)):
                rec[key].append(value)
        rec["pred"] = np.stack(rec["pred"])
        out[k] = rec
    return out
