"""Forward baselines on whole targets: every applicable baseline on every PTM's stored features
(or source logits) of every target, timed, cached per ``baseline|target``."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from spider.benchmark.inputs import JsonCache, Zoo
from spider.benchmark.markdown import ablation_table, fmt, table
from spider.benchmark.methods import METRICS, MethodResult, ablation_entries, method_result, pick_winner
from spider.familiarity import Familiarity

__all__ = ["applicable_baselines", "baseline_errors", "copeland_scores", "fused_ranking", "rerank_ablation",
           "rerank_ceiling", "rerank_section", "run_baselines"]

# Forward re-ranking: the main ranking's top k re-ordered by a fusion with one of the RERANK_CANDIDATES
# forward baselines best on validation, weight in RERANK_WEIGHTS; k = 0 stands for every PTM.
RERANK_KS = (3, 10, 0)
RERANK_WEIGHTS = (0.25, 0.5, 0.75)
RERANK_CANDIDATES = 3
# Top-k re-ranking's ceiling (rerank_ceiling): the main ranking's top k ordered by the ground truth.
CEILING_KS = (3, 5, 10)


def applicable_baselines() -> list[str]:
    """Every registered baseline that ranks PTMs for classification targets."""
    from spider.baselines import get_baseline, list_baselines

    return [b for b in list_baselines() if "classification" in get_baseline(b).tasks]


def _contiguous(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _call(name: str, labels: np.ndarray, inputs: Mapping[str, Any]) -> float:
    from spider.baselines import get_baseline

    baseline = get_baseline(name)
    kwargs = {k: inputs[k] for k in baseline.needs}
    if any(v is None for v in kwargs.values()):
        raise ValueError("the PTM has no stored source logits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(baseline(labels=labels, **kwargs))


def run_baselines(zoo: Zoo, names: Sequence[str], cache: JsonCache,
                  log: Callable[[str], None] = lambda _: None) -> tuple[dict, dict]:
    """Returns ``(scores, seconds)``, each ``{baseline: [T, M] float64}`` over ``zoo.targets``;
    NaN score where a baseline failed (its error is kept in the cache, see :func:`baseline_errors`).
    Only the cells missing from ``cache`` are computed (a new baseline does not re-run the others), so
    cells computed in different runs keep the timings of their own run (same machine: the cache's identity)."""
    todo = {t: [b for b in names if cache.get(f"{b}|{t}") is None] for t in zoo.targets}
    todo = {t: missing for t, missing in todo.items() if missing}
    warmed: set[str] = set()
    for i, (target, missing) in enumerate(todo.items()):
        labels = _contiguous(zoo.store.entry(zoo.general, target).labels())
        rows: dict[str, dict[str, list]] = {b: {"score": [], "seconds": [], "error": []} for b in missing}
        for model in zoo.models:
            entry = zoo.store.entry(model, target)
            inputs = {"features": np.ascontiguousarray(entry.features(), dtype=np.float32),
                      "source_logits": np.ascontiguousarray(entry.logits(), dtype=np.float32)
                      if entry.has_logits else None}
            for name in set(missing) - warmed:  # first calls pay one-off costs (imports, kernels): untimed
                with contextlib.suppress(Exception):
                    _call(name, labels, inputs)
                warmed.add(name)
            for name in missing:
                error = ""
                start = time.perf_counter()
                try:
                    value = _call(name, labels, inputs)
                except Exception as err:  # noqa: BLE001 - any failure is a NaN cell, reported
                    value, error = math.nan, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                rows[name]["seconds"].append(time.perf_counter() - start)
                rows[name]["score"].append(value if math.isfinite(value) else None)
                rows[name]["error"].append(error)
        for name in missing:
            cache.put(f"{name}|{target}", rows[name])
        log(f"baselines {i + 1}/{len(todo)}: {target} ({', '.join(missing)})")
    scores = {b: np.array([[np.nan if v is None else v for v in cache.get(f"{b}|{t}")["score"]]
                           for t in zoo.targets], dtype=np.float64) for b in names}
    seconds = {b: np.array([cache.get(f"{b}|{t}")["seconds"] for t in zoo.targets], dtype=np.float64)
               for b in names}
    return scores, seconds


def baseline_errors(zoo: Zoo, names: Sequence[str], cache: JsonCache) -> list[str]:
    """``"<baseline> on <model>/<target>: <error>"`` for every failed cell."""
    return [f"{b} on {m}/{t}: {error}" for b in names for t in zoo.targets
            for m, error in zip(zoo.models, cache.get(f"{b}|{t}")["error"]) if error]


def copeland_scores(scores: Mapping[str, np.ndarray], members: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The Copeland aggregate of ``members``' scores [T, M]: ``(scores [T, M], seconds [T])``
    (seconds: the aggregation itself; add the members' own time for the method's cost)."""
    from spider.aggregate import copeland

    num_targets = next(iter(scores.values())).shape[0]
    out, seconds = [], []
    for t in range(num_targets):
        start = time.perf_counter()
        out.append(np.asarray(copeland(np.stack([scores[b][t] for b in members])).scores, dtype=np.float64))
        seconds.append(time.perf_counter() - start)
    return np.stack(out), np.asarray(seconds)


def fused_ranking(pred: np.ndarray, scores: np.ndarray, topk: int, weight: float,
                  novel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spider.modules.forward_rerank` of a ranking ``pred`` [T, M] with a baseline's cached
    ``scores`` [T, M]: (rank-valued predictions [T, M], bool [T, M] of the PTMs that ran). Targets
    marked in ``novel`` (bool [T]: unlike every training task, :mod:`spider.familiarity`) take
    :data:`spider.modules.NOVEL_RERANK_WEIGHT`, as ``spider rank`` does."""
    import torch

    from spider.evaluate import rank_values
    from spider.modules import NOVEL_RERANK_WEIGHT, forward_rerank

    def fuse(w: float) -> tuple[np.ndarray, np.ndarray]:
        result = forward_rerank(torch.as_tensor(pred), topk, lambda top: torch.as_tensor(
            np.take_along_axis(scores, top.numpy(), axis=1)), w)
        return rank_values(result.order).numpy(), result.rescored.numpy()

    ranks, ran = fuse(weight)
    if novel is not None and np.any(novel):
        rows = np.asarray(novel, dtype=bool)
        ranks[rows], ran[rows] = (x[rows] for x in fuse(NOVEL_RERANK_WEIGHT))
    return ranks, ran


def rerank_ablation(zoo: Zoo, main: MethodResult, rows: Mapping[str, MethodResult], scores: Mapping[str, np.ndarray],
                    seconds: Mapping[str, np.ndarray], extraction: Mapping[str, Mapping[str, float]],
                    familiar: Mapping[str, Familiarity] | None = None) -> tuple[dict, list]:
    """Forward re-ranking (:func:`spider.modules.forward_rerank`) of the ``main`` row's rankings (one
    per seed or ensemble): every k of :data:`RERANK_KS`, weight of :data:`RERANK_WEIGHTS` and one of
    the :data:`RERANK_CANDIDATES` baselines of ``scores`` best on validation (``rows``: their rows;
    ``seconds``: their [T, M] times; ``familiar``: each target's familiarity, a novel one is fused as
    :func:`fused_ranking` says). Per k, the winner on the VALIDATION targets. Returns ``({k: row},
    ablation table entries)``; a row's time adds the k PTMs' extraction and scores."""
    num = len(zoo.models)
    novel = None if familiar is None else np.array([familiar[t].novel for t in zoo.targets])
    candidates = sorted(scores, key=lambda b: -rows[b].mean("wtau_paper", zoo.val_targets))[:RERANK_CANDIDATES]
    winners, entries = {}, []
    for k in RERANK_KS:
        top_k = num if k == 0 else min(k, num)
        settings = {}
        for b, w in ((b, w) for b in candidates for w in RERANK_WEIGHTS):
            preds, total, extract_s = [], np.zeros(len(zoo.targets)), np.zeros(len(zoo.targets))
            for pred in main.preds:
                fused, ran = fused_ranking(pred, scores[b], top_k, w, novel)
                preds.append(fused)
                extract_s += [sum(extraction[m][t] for m, r in zip(zoo.models, ran[i]) if r)
                              for i, t in enumerate(zoo.targets)]
                total += (seconds[b] * ran).sum(axis=1)
            n = len(main.preds)
            extract_s = np.array([main.extract_seconds[t] for t in zoo.targets]) + extract_s / n
            score_s = np.array([main.score_seconds[t] for t in zoo.targets]) + total / n
            name = f"model_spider + {b} " + ("(every PTM)" if k == 0 else f"top {k}")
            settings[(b, w)] = method_result(name, "spider", zoo, preds, seconds=extract_s + score_s,
                                             extract_seconds=extract_s, score_seconds=score_s, ptm_passes=top_k,
                                             general_passes=1, note=f"{main.name}'s top {top_k} re-ordered by a "
                                             f"fusion with {b} (weight {w:g}; chosen on validation)")
        by_label = {f"{b}, w = {w:g}": r for (b, w), r in settings.items()}
        best = pick_winner(by_label, zoo)
        winners[k] = by_label[best]
        prefix = f"top {'every PTM' if k == 0 else k}: "
        entries += ablation_entries({prefix + label: r for label, r in by_label.items()}, prefix + best, zoo,
                                    len(main.preds))
    return winners, entries


def rerank_ceiling(zoo: Zoo, main: MethodResult) -> list[dict[str, Any]]:
    """What any top-k re-ranker of the ``main`` row's rankings could reach at best: its top k PTMs
    ordered by their fine-tuned accuracy itself (the ground truth), the other PTMs left in place,
    for every k of :data:`CEILING_KS`. Not a method and not a decision: it bounds the gain that
    re-ordering the top k among themselves (:func:`fused_ranking`) can add to the main ranking. ``[{"k", "val", "test"}]`` (metric means
    over the main row's seeds; ``main``'s own means as ``k = 0``)."""
    out = [{"k": 0, **{s: {m: main.mean(m, zoo.stage_targets(s)) for m in METRICS} for s in ("val", "test")}}]
    for k in CEILING_KS:
        r = method_result("ceiling", "spider", zoo, [fused_ranking(p, zoo.truth, min(k, len(zoo.models)), 1.0)[0]
                                                      for p in main.preds],
                          seconds=0, extract_seconds=0, score_seconds=0, ptm_passes=k, general_passes=1)
        out.append({"k": k, **{s: {m: r.mean(m, zoo.stage_targets(s)) for m in METRICS} for s in ("val", "test")}})
    return out


def rerank_section(ablation: Sequence[Mapping[str, Any]], rerank3: str,
                   ceiling: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The report's section on :func:`rerank_ablation` (``rerank3``: the goal check's top-3 row) and,
    where given, :func:`rerank_ceiling`."""
    lines = ["", "## Forward re-ranking ablation: baseline, k and weight",
            "`model_spider + <baseline>` rows: the main ranking's top k PTMs run on the target, and a forward "
            "baseline's scores of their features re-order them (`spider rank --rerank-baseline B --rerank-topk k "
            "--rerank-weight w`; `spider.modules.forward_rerank`: (1 - w) x main z-score + w x baseline z-score, both "
            f"over the k). Candidates: the {RERANK_CANDIDATES} forward baselines best on the validation targets, w in "
            f"{', '.join(f'{w:g}' for w in RERANK_WEIGHTS)}. Per k, the winner on the validation targets' mean "
            "wtau_paper is the row in the tables above; only its test score is looked at. The goal check's top-3 "
            f"re-ranking is whichever of this top-3 winner and `rerank@3` scores best on validation (`{rerank3}`). "
            "A target unlike every training task (`spider.familiarity`, see the notes) is ordered by the baseline "
            "alone (`NOVEL_RERANK_WEIGHT`), as `spider rank` does.",
            "", ablation_table(ablation)]
    if ceiling:
        base = next(c for c in ceiling if c["k"] == 0)
        lines += ["", "## Ceiling of top-k re-ranking",
                  "What any re-ranker with a budget of k PTM runs could reach at best: the main Model Spider "
                  "ranking's top k ordered by their fine-tuned accuracy itself, the other PTMs left in place "
                  "(`spider.benchmark.forward.rerank_ceiling`; mean over the main ranking's seeds). It is not a "
                  "method and decides nothing: it bounds what re-ordering the top k among themselves (as every "
                  "`model_spider + <baseline>` row does) can add to the main ranking.", "",
                  table(["k", "val wtau_paper", "gain", "val top-1 regret", "test wtau_paper", "gain",
                         "test top-1 regret"],
                        [["main ranking" if c["k"] == 0 else c["k"],
                          *(x for s in ("val", "test") for x in (
                              fmt(c[s]["wtau_paper"]), fmt(c[s]["wtau_paper"] - base[s]["wtau_paper"]),
                              fmt(c[s]["top1_regret"], 2, False)))] for c in ceiling])]
    return lines
