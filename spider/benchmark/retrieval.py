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
from spider.familiarity import Familiarity, TaskReference

__all__ = ["KS", "bank_reference", "bank_retrieval", "familiarity_note", "retrieval_row", "target_centres",
           "target_familiarity"]

NAME = "bank_retrieval"
KS = (3, 5, 10)  # bank tasks averaged; searched on the validation targets


def bank_reference(zoo: Zoo, limit: int | None = None) -> TaskReference:
    """The fine-tuning bank's tasks (the first ``limit``) as a :class:`~spider.familiarity.TaskReference`:
    the training tasks of the report's scorers (fine-tuning labels), built as training builds it."""
    from spider.datamodules.episodes import training_reference
    from spider.datamodules.finetune_bank import open_bank

    return training_reference(zoo.store, zoo.general, open_bank(zoo.root, zoo.models).specs[:limit])


def target_centres(zoo: Zoo, target: str) -> np.ndarray:
    """A target's class centres [C, Dg] under the general encoder (its stored ranking split)."""
    from spider.datamodules.tasks import contiguous
    from spider.datamodules.tokens import class_centres

    entry = zoo.store.entry(zoo.general, target)
    labels = contiguous(entry.labels())
    return class_centres(entry.features(), labels, int(labels.max()) + 1).numpy()


def target_familiarity(zoo: Zoo, reference: TaskReference | None = None) -> dict[str, Familiarity]:
    """Every target against ``reference`` (default: the whole bank, :func:`bank_reference`)."""
    reference = bank_reference(zoo) if reference is None else reference
    return {t: reference.familiarity(target_centres(zoo, t)) for t in zoo.targets}


def familiarity_note(familiar: Mapping[str, Mapping[str, Any]]) -> str:
    """The report's note on :func:`target_familiarity` (``familiar``: target -> ``Familiarity.as_dict()``)."""
    novel = [t for t, f in familiar.items() if f["novel"]]
    threshold = next(iter(familiar.values()))["threshold"] if familiar else None
    return ("- Familiarity (`spider.familiarity`): each target's similarity to its nearest bank task, general-encoder "
            f"class centres; novel at or below {'n/a' if threshold is None else format(threshold, '.3f')}, the "
            "closest any bank task comes to a bank task of "
            "other pool datasets: " + ", ".join(f"{t} {f['similarity']:.3f}" for t, f in familiar.items())
            + f". Novel: {', '.join(novel) if novel else 'none'}.")


def bank_retrieval(zoo: Zoo, ks: Sequence[int], limit: int | None = None) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """``({k: [T, M] scores}, [T] seconds per target)`` over ``zoo.targets``: the mean bank accuracy
    of the ``k`` bank tasks best matching the target (only the bank's first ``limit`` tasks when
    given; :meth:`~spider.familiarity.TaskReference.similarities`). Seconds: the target's class
    centres and its match against every bank task (the bank tasks' centres are a one-off cost of
    the zoo, not counted)."""
    from spider.datamodules.finetune_bank import open_bank

    reference = bank_reference(zoo, limit)
    accuracy = np.asarray(open_bank(zoo.root, zoo.models).accuracy[:limit], dtype=np.float64)
    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    seconds = []
    for target in zoo.targets:
        start = time.perf_counter()
        nearest = np.argsort(-reference.similarities(target_centres(zoo, target)), kind="stable")
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
