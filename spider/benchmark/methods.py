"""One result row per method, scored by the one evaluation function (:func:`spider.evaluate.evaluate`).

Every row holds per-target metrics over the zoo's validation and test targets (means over seeds),
the seed spread of each stage's mean, and the cost of one selection per target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spider.benchmark.inputs import Zoo
from spider.evaluate import METRICS, evaluate, nanmean

__all__ = ["FIRM_SHARE", "METRICS", "MethodResult", "ablation_entries", "method_result", "pick_winner", "prior_rows",
           "spider_row", "summary", "win_shares"]

STAGES = ("val", "test")


@dataclass
class MethodResult:
    """One row: ``per_target[metric][target]`` (mean over seeds) and per-target costs in seconds."""

    name: str
    kind: str  # "baseline", "aggregate", "prior", "spider", "history" (learned from fine-tuning history)
    per_target: dict[str, dict[str, float]]
    seconds: dict[str, float]  # one selection: extraction + scoring
    extract_seconds: dict[str, float]
    score_seconds: dict[str, float]
    ptm_passes: int  # PTM forward passes over the target
    general_passes: int  # general-encoder forward passes over the target
    spread: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> metric -> std over seeds
    note: str = ""
    preds: list[np.ndarray] = field(default_factory=list)  # [T, M] per seed, over zoo.targets

    def values(self, metric: str, targets: Sequence[str]) -> list[float]:
        return [self.per_target[metric][t] for t in targets]

    def mean(self, metric: str, targets: Sequence[str]) -> float:
        return nanmean(self.values(metric, targets))

    def mean_seconds(self, targets: Sequence[str]) -> float:
        return nanmean([self.seconds[t] for t in targets])


def method_result(name: str, kind: str, zoo: Zoo, preds: Sequence[np.ndarray], *, seconds: Any,
                  extract_seconds: Any, score_seconds: Any, ptm_passes: int, general_passes: int,
                  note: str = "") -> MethodResult:
    """Score ``preds`` (one [T, M] or [M] array per seed, over ``zoo.targets``) and average over seeds.

    ``seconds``, ``extract_seconds``, ``score_seconds``: [T] (or one number for every target).
    """
    targets = zoo.targets
    indexes = np.arange(len(targets))
    tables = [evaluate({name: p}, zoo.truth, indexes, targets) for p in preds]
    per_target = {m: {t: nanmean([tab[m][name][t] for tab in tables]) for t in targets} for m in METRICS}
    spread: dict[str, dict[str, float]] = {}
    if len(tables) > 1:
        for stage in STAGES:
            names = zoo.stage_targets(stage)
            if names:
                spread[stage] = {m: float(np.std([nanmean([tab[m][name][t] for t in names]) for tab in tables]))
                                 for m in METRICS}

    def per(value: Any) -> dict[str, float]:
        array = np.broadcast_to(np.asarray(value, dtype=np.float64), (len(targets),))
        return dict(zip(targets, array.tolist()))

    full = [np.broadcast_to(np.asarray(p, dtype=np.float64), zoo.truth.shape).copy() for p in preds]
    return MethodResult(name, kind, per_target, per(seconds), per(extract_seconds), per(score_seconds),
                        ptm_passes, general_passes, spread, note, full)


def spider_row(name: str, zoo: Zoo, runs: Sequence[Mapping[str, Any]], ptm_passes: int, note: str) -> MethodResult:
    """A Model Spider row from its per-seed rankings (:func:`spider.benchmark.training.rank_targets`
    records: ``pred`` and the per-target ``seconds``, ``extract_seconds``, ``score_seconds``)."""
    mean = lambda key: np.mean([np.asarray(r[key]) for r in runs], axis=0)  # noqa: E731
    return method_result(name, "spider", zoo, [r["pred"] for r in runs], seconds=mean("seconds"),
                         extract_seconds=mean("extract_seconds"), score_seconds=mean("score_seconds"),
                         ptm_passes=ptm_passes, general_passes=1, note=note)


#: A challenger replaces the shipped setting only when its validation mean beats the shipped one's in
#: at least this share of resamples of the validation targets (:func:`win_shares` of the two): a
#: decision the validation targets cannot make keeps what ships instead of following their noise.
#: Declared before it was applied to any zoo, never tuned.
FIRM_SHARE = 0.75


def pick_winner(candidates: Mapping[str, MethodResult], zoo: Zoo, metric: str = "wtau_paper",
                shipped: str | None = None) -> str:
    """The candidate with the best mean ``metric`` over the VALIDATION targets only (test targets
    never decide). Without validation targets the first candidate (the paper's setting) wins.

    ``shipped``: the candidate the shipped config uses. The best one replaces it only when it beats it
    firmly (:data:`FIRM_SHARE` of the validation resamples); otherwise ``shipped`` is kept."""
    if not zoo.val_targets:
        return next(iter(candidates))
    sign = -1.0 if metric == "top1_regret" else 1.0
    finite = {k: sign * r.mean(metric, zoo.val_targets) for k, r in candidates.items()}
    finite = {k: v for k, v in finite.items() if math.isfinite(v)}
    if not finite:
        return next(iter(candidates))
    best = max(finite, key=finite.get)
    if shipped is None or best == shipped or shipped not in finite:
        return best
    pair = sign * np.array([candidates[k].values(metric, zoo.val_targets) for k in (best, shipped)], dtype=np.float64)
    if not np.isfinite(pair).all():  # a target only one of them can score: the means decide
        return best
    return best if win_shares(pair)[0] >= FIRM_SHARE else shipped


def win_shares(scores: np.ndarray, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """How often each setting has the best mean when the targets are drawn again with replacement.

    ``scores``: [S, T] (settings x targets, higher is better). Returns [S], summing to 1 (ties split
    evenly). A decision whose winner wins only about 1/S of the resamples is one the targets cannot
    make: the other targets a user brings may well reverse it."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0 or not np.isfinite(scores).all():
        raise ValueError(f"win_shares: expected a finite [settings, targets] array, got shape {scores.shape}")
    picks = np.random.default_rng(seed).integers(0, scores.shape[1], size=(resamples, scores.shape[1]))
    means = scores[:, picks].mean(axis=2)  # [S, R]
    best = means == means.max(axis=0, keepdims=True)
    return (best / best.sum(axis=0, keepdims=True)).mean(axis=1)


def ablation_entries(rows: Sequence[MethodResult] | Mapping[str, MethodResult], winner: str, zoo: Zoo,
                     seeds: int) -> list[dict[str, Any]]:
    """An ablation table's entries (:func:`spider.benchmark.markdown.ablation_table`): each row's
    validation means and seed std, its share of wins when the validation targets are resampled
    (:func:`win_shares` on ``wtau_paper``, the deciding metric); the test means of the ``winner``
    only (the others' are never looked at). ``rows``: a mapping names them by its keys (``winner``
    is one), else by their own names."""
    named = dict(rows) if isinstance(rows, Mapping) else {r.name: r for r in rows}
    values = np.array([r.values("wtau_paper", zoo.val_targets) for r in named.values()], dtype=np.float64)
    shares = (win_shares(values) if zoo.val_targets and np.isfinite(values).all()
              else [math.nan] * len(named))
    return [{"setting": name, "winner": name == winner, "seeds": seeds,
             "val": {m: r.mean(m, zoo.val_targets) for m in METRICS}, "val_std": r.spread.get("val", {}),
             "val_win_share": float(share),
             "test": {m: r.mean(m, zoo.test_targets) for m in METRICS} if name == winner else None}
            for (name, r), share in zip(named.items(), shares)]


def summary(rows: Sequence[MethodResult], targets: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{method: {"wtau_paper", "wtau_symmetric", "top1_regret", "seconds_per_target"}}`` (means
    over ``targets`` and seeds): the ``"val"``/``"test"`` sections of ``results.json``."""
    return {r.name: {**{m: r.mean(m, targets) for m in METRICS}, "seconds_per_target": r.mean_seconds(targets)}
            for r in rows}


def prior_rows(zoo: Zoo, work: Path) -> list[MethodResult]:
    """Every available static prior, from what the main fit's datamodule knows before any target
    (labels, fine-tuning bank, parameter counts); its cost per target is computing its scores."""
    from spider.benchmark.training import FitSpec, fit_config
    from spider.priors import available_priors, prior_scores
    from spider.run_inputs import build_datamodule, resolve_inputs

    cfg = fit_config(zoo, FitSpec(), work)
    inputs = resolve_inputs(cfg)
    known = build_datamodule(cfg, inputs, progress=False).prior_inputs(inputs.get("params"))
    rows = []
    for name in available_priors(known):
        start = time.perf_counter()
        scores = prior_scores(name, known)
        seconds = time.perf_counter() - start
        rows.append(method_result(name, "prior", zoo, [scores], seconds=seconds, extract_seconds=0.0,
                                  score_seconds=seconds, ptm_passes=0, general_passes=0,
                                  note="static prior: one ranking for every target"))
    return rows
