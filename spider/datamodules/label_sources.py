"""Where the training labels come from: ``data.label_source``.

* ``copeland`` - the paper: the Copeland aggregate of the label cache's baselines on every task.
* ``finetune`` - real fine-tuned accuracies of the fine-tuning bank (:mod:`spider.pipeline.bank`), on
  the bank's tasks only (fewer tasks, true supervision).
* ``finetune_nll`` - the same runs, labelled by minus their mean test cross-entropy: a bank task
  has a few test images per class, so accuracies move in steps of several points and tie often;
  the cross-entropy of the same images orders the PTMs without ties.
* ``mixed`` - every label-cache task; the bank's tasks carry fine-tuned accuracies, the others
  Copeland labels. ``mixed_weight`` w >= 1 lists each fine-tuned task w times, so an epoch draws
  it w times as often as a Copeland task (the listwise losses use only the order of a task's
  labels, so weighting by frequency needs no per-task loss weight).
* ``selected`` - a Copeland aggregate of the baselines that agree with the bank: each baseline's
  mean weighted tau against the fine-tuned accuracies over the bank's tasks (pool tasks only,
  never a target) is measured, and the ``selected_members`` best ones with a positive agreement
  are aggregated on every task.

Any source can add the validation targets as training tasks (:func:`plus_targets`,
``data.val_targets_as_tasks``): each whole target labelled by its ground truth, the full
fine-tuning protocol on classes no PTM saw. A fit that does so has no honest validation metric, so
it is the last step, once the validation targets have decided every setting.

Everything here is a pure function of the label cache and the bank, so every DDP rank computes
the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from spider.errors import ConfigError

LABEL_SOURCES = ("copeland", "finetune", "finetune_nll", "mixed", "selected")


@dataclass(frozen=True)
class TrainingLabels:
    """Task specs (JSON) and their labels ``scores`` [N, M] (NaN = no label), plus provenance."""

    spec_texts: list[str]
    scores: np.ndarray
    source: str
    members: tuple[str, ...] = ()  # baselines aggregated (copeland / selected / mixed)
    agreement: dict[str, float] | None = None  # baseline -> mean weighted tau vs the bank


def _check_bank(cache: Any, bank: Any) -> None:
    if bank is None:
        raise ConfigError("data.label_source: needs a fine-tuning bank (data.finetune_bank, or a zoo built "
                          "with its 'bank' stage)")
    if list(bank.models) != list(cache.models):
        raise ConfigError(f"data.finetune_bank: models {bank.models[:3]}... differ from the label cache's "
                          f"{cache.models[:3]}...")
    head = cache.spec_texts[:bank.num_tasks]
    if len(head) < bank.num_tasks or [s.to_json() for s in bank.specs] != head:
        raise ConfigError("data.finetune_bank: its tasks are not the first tasks of the label cache (built "
                          "with other task settings?)")


def baseline_agreement(cache: Any, bank: Any) -> dict[str, float]:
    """Mean weighted tau (paper protocol) of each cached baseline against the bank's accuracies."""
    from spider.metrics.functional import weighted_tau

    out = {}
    for b, name in enumerate(cache.baselines):
        taus = []
        for i in range(bank.num_tasks):
            raw, acc = cache.raw[i, b], bank.accuracy[i]
            ok = np.isfinite(raw) & np.isfinite(acc)
            if ok.sum() >= 2:
                taus.append(float(weighted_tau(preds=raw[ok], target=acc[ok])))
        out[name] = float(np.mean(taus)) if taus else float("nan")
    return out


def plus_targets(labels: TrainingLabels, specs: list[str], truth: np.ndarray, copies: int) -> TrainingLabels:
    """``labels`` with ``copies`` more tasks per target: ``specs`` (TaskSpec JSON, one per target)
    labelled by ``truth`` [T, M] (fine-tuned accuracies, the labels' model order; NaN = no run).
    ``copies`` weights them by frequency, like ``mixed_weight``.

    Raises:
        ConfigError: ``copies`` < 1, no targets, or ``truth`` not [len(specs), M] (one line).
    """
    truth = np.asarray(truth, dtype=np.float64)
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
        raise ConfigError(f"data.val_targets_as_tasks: expected an integer >= 1 here, got {copies!r}")
    if not specs:
        raise ConfigError("data.val_targets_as_tasks: needs validation targets (data.val_datasets is empty)")
    if truth.shape != (len(specs), labels.scores.shape[1]):
        raise ConfigError(f"data.val_targets_as_tasks: ground truth of shape {truth.shape}, expected "
                          f"{(len(specs), labels.scores.shape[1])} (targets x PTMs)")
    return replace(labels, spec_texts=list(labels.spec_texts) + list(specs) * copies,
                   scores=np.concatenate([labels.scores] + [truth] * copies))


def training_labels(source: str, cache: Any, bank: Any = None, *, mixed_weight: int = 1,
                    selected_members: int = 3) -> TrainingLabels:
    """The labelled tasks one epoch draws from, for ``source`` (see the module docstring).

    Args:
        cache: a :class:`spider.pipeline.labelling.LabelCache`.
        bank: a :class:`spider.datamodules.finetune_bank.FinetuneBank` with the cache's models, whose tasks are
            the cache's first tasks (needed by every source but ``copeland``).

    Raises:
        ConfigError: unknown source, missing or mismatched bank, bad weights (one line).
    """
    if source not in LABEL_SOURCES:
        raise ConfigError(f"data.label_source: unknown {source!r}; expected one of {', '.join(LABEL_SOURCES)}")
    if source == "copeland":
        return TrainingLabels(list(cache.spec_texts), np.array(cache.scores), source, tuple(cache.baselines))
    _check_bank(cache, bank)
    if source == "finetune":
        return TrainingLabels(list(cache.spec_texts[:bank.num_tasks]), np.array(bank.accuracy), source)
    if source == "finetune_nll":
        if bank.test_nll is None:
            raise ConfigError("data.label_source=finetune_nll: the fine-tuning bank has no test_nll.csv (built "
                              "before it was recorded: run its bank stage again, spider zoo build --stages bank)")
        return TrainingLabels(list(cache.spec_texts[:bank.num_tasks]), -np.array(bank.test_nll), source)
    if source == "mixed":
        if not isinstance(mixed_weight, int) or mixed_weight < 1:
            raise ConfigError(f"data.mixed_weight: expected an integer >= 1, got {mixed_weight!r}")
        k = bank.num_tasks
        scores = np.array(cache.scores)
        scores[:k] = bank.accuracy
        texts = list(cache.spec_texts) + list(cache.spec_texts[:k]) * (mixed_weight - 1)
        scores = np.concatenate([scores] + [bank.accuracy] * (mixed_weight - 1))
        return TrainingLabels(texts, scores, source, tuple(cache.baselines))
    from spider.aggregate import copeland

    if not isinstance(selected_members, int) or selected_members < 1:
        raise ConfigError(f"data.selected_members: expected an integer >= 1, got {selected_members!r}")
    agreement = baseline_agreement(cache, bank)
    ranked = sorted((a, name) for name, a in agreement.items() if np.isfinite(a) and a > 0)[::-1]
    members = tuple(name for _, name in ranked[:selected_members])
    if not members:
        raise ConfigError(f"data.label_source=selected: no baseline agrees with the fine-tuning bank "
                          f"(mean weighted tau {agreement})")
    rows = [list(cache.baselines).index(m) for m in members]
    scores = np.asarray(copeland(cache.raw[:, rows, :]).scores, dtype=np.float64)
    return TrainingLabels(list(cache.spec_texts), scores, source, members, agreement)
