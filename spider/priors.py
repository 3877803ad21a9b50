"""Static priors: rank the PTMs without looking at the task.

A learned ranker must beat "the model that fine-tunes best on average" to be worth its cost, so
every results table shows these beside the forward baselines. A prior maps what is known about
the zoo *before* a target arrives (training labels, the fine-tuning bank of pool tasks, model
metadata) to one score per PTM, higher = better; every target gets the same scores.

Registered like the baselines (``register_prior`` + ``prior_scores(name, inputs)``):

* ``label_mean`` - mean training label of each PTM over the label cache's tasks (Copeland).
* ``finetune_mean`` - mean fine-tuned accuracy over the fine-tuning bank's pool tasks (the
  "fine-tuning history" prior).
* ``finetune_ood_mean`` - the same mean over the bank tasks outside the PTM's own source domains:
  what its history says about a domain it was not pre-trained on (a specialist's home tasks would
  otherwise lift it everywhere).
* ``param_count`` - number of parameters (bigger first).

Besides one score per PTM, the bank also says which PTMs behave alike across pool tasks:
:func:`history_embedding` turns it into a vector per PTM, the start of the scorer's model tokens
with ``data.history_tokens`` (:func:`spider.train.build_scorer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spider.errors import ConfigError
from spider.registry import Registry

PRIORS: Registry[Callable[["PriorInputs"], np.ndarray]] = Registry("static prior")


@dataclass(frozen=True)
class PriorInputs:
    """What the priors may use; any part may be missing (that prior is then unavailable).

    ``labels`` [N, M] training labels in ``models`` order (NaN = none); ``bank_accuracy`` [K, M]
    fine-tuned accuracies (%) on pool tasks; ``params`` PTM id -> parameter count;
    ``bank_datasets`` the pool datasets each of the K bank tasks draws classes from;
    ``dataset_domains`` pool dataset id -> its source domain and ``model_domains`` PTM id -> its
    source domains (:mod:`spider.zoo.domains`).
    """

    models: Sequence[str]
    labels: np.ndarray | None = None
    bank_accuracy: np.ndarray | None = None
    params: Mapping[str, int] = field(default_factory=dict)
    bank_datasets: Sequence[Sequence[str]] | None = None
    dataset_domains: Mapping[str, str] = field(default_factory=dict)
    model_domains: Mapping[str, Sequence[str]] = field(default_factory=dict)


def register_prior(name: str, **meta: Any):
    """Decorator: register ``fn(inputs: PriorInputs) -> float [M]`` as a static prior."""
    return PRIORS.register(name, **meta)


def list_priors(pattern: str = "*") -> list[str]:
    return PRIORS.list(pattern)


def available_priors(inputs: PriorInputs) -> list[str]:
    """The registered priors whose inputs are present."""
    out = []
    for name in list_priors():
        try:
            prior_scores(name, inputs)
        except ConfigError:
            continue
        out.append(name)
    return out


def prior_scores(name: str, inputs: PriorInputs) -> np.ndarray:
    """float64 [M] scores of prior ``name`` (finite; higher = better).

    Raises:
        RegistryError: unknown prior.  ConfigError: its inputs are missing or not finite.
    """
    scores = np.asarray(PRIORS.get(name)(inputs), dtype=np.float64)
    if scores.shape != (len(inputs.models),):
        raise ConfigError(f"prior {name!r}: expected {len(inputs.models)} scores, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ConfigError(f"prior {name!r}: non-finite score for "
                          f"{[m for m, s in zip(inputs.models, scores) if not np.isfinite(s)][:3]}")
    return scores


def _column_means(matrix: np.ndarray | None, what: str) -> np.ndarray:
    if matrix is None or np.asarray(matrix).size == 0:
        raise ConfigError(f"static prior: no {what}")
    matrix = np.asarray(matrix, dtype=np.float64)
    seen = np.isfinite(matrix)
    if not seen.any(0).all():
        raise ConfigError(f"static prior: a PTM has no {what}")
    return np.where(seen, matrix, 0.0).sum(0) / seen.sum(0)


@register_prior("label_mean")
def label_mean(inputs: PriorInputs) -> np.ndarray:
    return _column_means(inputs.labels, "training labels")


@register_prior("finetune_mean")
def finetune_mean(inputs: PriorInputs) -> np.ndarray:
    return _column_means(inputs.bank_accuracy, "fine-tuning bank")


@register_prior("finetune_ood_mean")
def finetune_ood_mean(inputs: PriorInputs) -> np.ndarray:
    # A PTM pre-trained on every domain of the bank has no task outside them: all its tasks count.
    if inputs.bank_accuracy is None:
        raise ConfigError("static prior: no fine-tuning bank")
    accuracy = np.asarray(inputs.bank_accuracy, dtype=np.float64)
    datasets = inputs.bank_datasets
    if datasets is None or len(datasets) != accuracy.shape[0]:
        raise ConfigError(f"static prior 'finetune_ood_mean': expected the pool datasets of each of the "
                          f"{accuracy.shape[0]} bank tasks, got {None if datasets is None else len(datasets)}")
    unknown = sorted({d for ds in datasets for d in ds} - set(inputs.dataset_domains))
    if unknown:
        raise ConfigError(f"static prior 'finetune_ood_mean': no source domain for pool datasets {unknown[:3]}")
    task_domains = [{inputs.dataset_domains[d] for d in ds} for ds in datasets]
    # A PTM of unknown sources (e.g. one added to a trained ranker) has no home tasks to leave out.
    outside = np.array([[not (t & set(inputs.model_domains.get(m, ()))) for m in inputs.models]
                        for t in task_domains])
    outside[:, ~outside.any(0)] = True
    return _column_means(np.where(outside, accuracy, np.nan), "fine-tuning bank")


def history_embedding(bank_accuracy: Any, dim: int, std: float) -> np.ndarray:
    """[M, dim] PTM vectors from the fine-tuning bank's accuracies [K tasks, M PTMs] (NaN: no run).

    Each task's accuracies are centred and scaled over the PTMs (a missing one counts as the task's
    mean; a task without runs, or with one accuracy for every PTM, says nothing and is dropped);
    PTM i's vector is row i of U S from the SVD of the resulting [M, K] matrix, its leading
    ``min(dim, rank)`` columns, zero beyond, the whole scaled to standard deviation ``std``. PTMs
    that fine-tune alike across the bank start close; a bank that tells no PTM apart gives zeros.

    Raises:
        ConfigError: not a [K, M] matrix, an infinite accuracy, ``dim`` < 1 or ``std`` not > 0.
    """
    acc = np.asarray(bank_accuracy, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[1] < 1:
        raise ConfigError(f"history tokens: expected bank accuracies [tasks, PTMs], got shape {acc.shape}")
    if np.isinf(acc).any():
        raise ConfigError("history tokens: the fine-tuning bank holds an infinite accuracy")
    if dim < 1 or not (std > 0 and np.isfinite(std)):
        raise ConfigError(f"history tokens: expected dim >= 1 and a finite std > 0, got dim={dim}, std={std}")
    acc = acc[np.isfinite(acc).any(axis=1)]  # a task without runs says nothing
    z = np.nan_to_num(acc - np.nanmean(acc, axis=1, keepdims=True)) if len(acc) else acc  # missing: the mean
    spread = z.std(axis=1)
    z = z[spread > 1e-12] / spread[spread > 1e-12, None]  # so does a task with one accuracy for all
    out = np.zeros((acc.shape[1], dim))
    if z.size:
        u, s, _ = np.linalg.svd(z.T, full_matrices=False)
        rank = min(dim, int((s > 1e-9 * s[0]).sum()))
        out[:, :rank] = u[:, :rank] * s[:rank]
    scale = out.std()
    return out * (std / scale) if scale > 0 else out


@register_prior("param_count")
def param_count(inputs: PriorInputs) -> np.ndarray:
    missing = [m for m in inputs.models if m not in inputs.params]
    if missing:
        raise ConfigError(f"static prior 'param_count': no parameter count for {missing[:3]}")
    return np.log10(np.asarray([float(inputs.params[m]) for m in inputs.models]))
