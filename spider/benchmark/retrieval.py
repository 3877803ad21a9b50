"""Bank retrieval in the benchmark: a ranker with nothing trained, the bar a learned ranker must
clear besides the static prior. A target's PTM scores are the mean fine-tuned accuracy of the ``k``
fine-tuning-bank tasks most like it (general-encoder class centres, symmetric mean best-match
cosine); ``k`` is chosen on the validation targets."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spider.benchmark.inputs import Zoo
from spider.benchmark.methods import METRICS, MethodResult, method_result, pick_winner

__all__ = ["KS", "bank_retrieval", "retrieval_row"]

NAME = "bank_retrieval"
KS = (3, 5, 10)  # bank tasks averaged; searched on the validation targets


def _unit(centres: Any) -> np.ndarray:
    c = np.asarray(centres, dtype=np.float64)
    return c / np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12)


def bank_retrieval(zoo: Zoo, ks: Sequence[int], limit: int | None = None) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """``({k: [T, M] scores}, [T] seconds per target)`` over ``zoo.targets``: the mean bank accuracy
    of the ``k`` bank tasks best matching the target (only the bank's first ``limit`` tasks when
    given). Seconds: the target's class centres and its match against every bank task (the bank
    tasks' centres are a one-off cost of the zoo, not counted)."""
    from spider.datamodules.finetune_bank import open_bank
    from spider.datamodules.label_cache import task_array
    from spider.datamodules.tasks import contiguous
    from spider.datamodules.tokens import class_centres

    bank = open_bank(zoo.root, zoo.models)
    specs, accuracy = bank.specs[:limit], np.asarray(bank.accuracy[:limit], dtype=np.float64)
    tasks = [_unit(class_centres(task_array(zoo.store, zoo.general, s), s.labels(), s.num_classes)) for s in specs]
    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    seconds = []
    for target in zoo.targets:
        entry = zoo.store.entry(zoo.general, target)
        start = time.perf_counter()
        labels = contiguous(entry.labels())
        own = _unit(class_centres(entry.features(), labels, int(labels.max()) + 1))
        match = np.array([0.5 * ((own @ t.T).max(1).mean() + (own @ t.T).max(0).mean()) for t in tasks])
        nearest = np.argsort(-match, kind="stable")
        seconds.append(time.perf_counter() - start)
        for k in ks:
            out[k].append(np.nanmean(accuracy[nearest[:k]], axis=0))
    return {k: np.stack(v) for k, v in out.items()}, np.asarray(seconds)


def retrieval_row(zoo: Zoo, extraction: Mapping[str, Mapping[str, float]],
                  ks: Sequence[int] = KS) -> tuple[MethodResult, dict[str, Any]]:
    """The ``bank_retrieval`` row (``k`` best on the VALIDATION targets' mean wtau_paper) and the
    report's record of every ``k``'s validation means. Cost per target = the general encoder's
    extraction + the match."""
    preds, seconds = bank_retrieval(zoo, ks)
    extract = np.array([extraction[zoo.general][t] for t in zoo.targets])
    rows = {f"k = {k}": method_result(NAME, "history", zoo, [preds[k]], seconds=extract + seconds,
                                      extract_seconds=extract, score_seconds=seconds, ptm_passes=0, general_passes=1)
            for k in ks}
    chosen = pick_winner(rows, zoo)
    rows[chosen].note = (f"mean bank accuracy of the {chosen.split(' = ')[1]} bank tasks nearest in general-encoder "
                         "class centres (chosen on validation); nothing trained")
    info = {"chosen_k": int(chosen.split(" = ")[1]),
            "settings": [{"setting": name, "val": {m: r.mean(m, zoo.val_targets) for m in METRICS}
                          if zoo.val_targets else {}} for name, r in rows.items()]}
    return rows[chosen], info
