"""Scoring many models (and many tasks) with several baselines at once, for label building.

Per task, the labels are validated and remapped to 0..C-1 once and shared by every model and
baseline; per model, its arrays are moved to the compute device once (``score_tasks`` keeps them
there for all tasks and slices the task's rows on the device). A baseline that fails on one model
(bad features, a singular matrix, missing source logits, a non-finite result) gives NaN for that
(baseline, model) cell and a :class:`BaselineFailedWarning`; the aggregators treat NaN as an
abstention. Problems that concern the whole call (unknown baseline, invalid labels, a baseline that
cannot handle the label kind) raise instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from spider.baselines._inputs import classification_labels, is_regression_labels, regression_targets
from spider.baselines.baseline_registry import Baseline, get_baseline
from spider.errors import BaselineInputError

__all__ = [
    "DEFAULT_BASELINES",
    "BaselineFailedWarning",
    "score_models",
    "score_tasks",
]

# The label-building set of Model Spider (paper, section 4.3).
DEFAULT_BASELINES: tuple[str, ...] = ("logme", "leep", "nce", "hscore")
MODEL_INPUT_KEYS = frozenset({"features", "source_logits"})


class BaselineFailedWarning(RuntimeWarning):
    """One baseline could not score one model; its cell is NaN."""


def _resolve_baselines(names: Sequence[str], regression: bool) -> list[Baseline]:
    if isinstance(names, str):
        names = [names]
    if len(names) == 0:
        raise BaselineInputError("baselines: expected at least one baseline name")
    resolved = [get_baseline(name) for name in names]  # RegistryError names the unknown one
    kind = "regression" if regression else "classification"
    for b in resolved:
        if kind not in b.tasks:
            raise BaselineInputError(f"baselines: {b.name!r} does not support {kind} labels")
    return resolved


def _check_options(options: Mapping[str, Mapping[str, Any]] | None, resolved: list[Baseline]) -> dict:
    options = dict(options or {})
    unknown = set(options) - {b.name for b in resolved}
    if unknown:
        raise BaselineInputError(f"options: given for baseline(s) {sorted(unknown)} that are not being run")
    return options


def _shared_labels(labels: Any, device: torch.device | str | None) -> tuple[torch.Tensor, bool]:
    """Labels validated once per task: ids remapped to 0..C-1, or float [N, K] targets."""
    if is_regression_labels(labels):
        return regression_targets(labels, device=device), True
    y, _ = classification_labels(labels, device=device)
    return y, False


def _check_model_inputs(model: str, arrays: Mapping[str, Any]) -> None:
    if not isinstance(arrays, Mapping):
        raise BaselineInputError(f"inputs[{model!r}]: expected a mapping with 'features' (and 'source_logits')")
    unknown = set(arrays) - MODEL_INPUT_KEYS
    if unknown:
        raise BaselineInputError(
            f"inputs[{model!r}]: unknown key(s) {sorted(unknown)}; expected {sorted(MODEL_INPUT_KEYS)}"
        )


def _to_device(array: Any, device: torch.device | str | None) -> Any:
    """The array as a tensor on ``device`` in its own dtype (uploaded once, converted per baseline)."""
    if array is None or device is None:
        return array
    t = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.array(array))
    return t.to(device)


def _score_cell(
    baseline: Baseline,
    model: str,
    labels: torch.Tensor,
    arrays: Mapping[str, Any],
    options: Mapping[str, Any],
) -> float:
    """One (baseline, model) score, or NaN with a warning when the baseline fails."""
    missing = [need for need in baseline.needs if arrays.get(need) is None]
    if missing:
        warnings.warn(
            f"baseline {baseline.name!r} skipped on model {model!r}: no {', '.join(missing)}",
            BaselineFailedWarning,
            stacklevel=3,
        )
        return math.nan
    kwargs = {key: arrays[key] for key in baseline.needs}
    try:
        # A registered baseline returns a finite float or raises (a non-finite score is a
        # BaselineInputError raised by the registry's wrapper).
        return baseline(labels=labels, **kwargs, **options)
    except (BaselineInputError, ArithmeticError, RuntimeError, ValueError) as err:
        # torch.linalg errors are RuntimeErrors; anything else is a bug and propagates.
        warnings.warn(
            f"baseline {baseline.name!r} failed on model {model!r}: {err}", BaselineFailedWarning, stacklevel=3
        )
        return math.nan


def score_models(
    labels: Any,
    inputs: Mapping[str, Mapping[str, Any]],
    baselines: Sequence[str] = DEFAULT_BASELINES,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: torch.device | str | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> np.ndarray:
    """Scores of M models on one task by K baselines.

    Args:
        labels: [N] class ids (any integer values) or [N, K] float regression targets, shared by
            every model (rows of every model's arrays are the same samples).
        inputs: model id -> ``{"features": [N, D], "source_logits": [N, Cs] (optional)}``,
            numpy arrays or torch tensors; the mapping's order is the column order.
        baselines: registered baseline names (rows of the result).
        options: optional extra keyword arguments per baseline name, e.g. ``{"gbc": {"pca_dim": 32}}``.
        device: compute device for every baseline (default: each array's own, CPU for numpy).
        progress: True shows a rich progress bar; a callable gets ``(done, total)`` model steps.

    Returns:
        float64 [K, M]; higher = better per row; NaN where a baseline failed on a model (each
        failure also emits a :class:`BaselineFailedWarning`).

    Raises:
        RegistryError: unknown baseline name.
        BaselineInputError: invalid labels, malformed ``inputs``, or a baseline that does not
            support the label kind.
    """
    y, regression = _shared_labels(labels, device)
    resolved = _resolve_baselines(baselines, regression)
    options = _check_options(options, resolved)
    out = np.full((len(resolved), len(inputs)), np.nan)
    report = _progress_callback(progress, len(inputs))
    try:
        for j, (model, arrays) in enumerate(inputs.items()):
            _check_model_inputs(model, arrays)
            on_device = {key: _to_device(arrays.get(key), device) for key in MODEL_INPUT_KEYS}
            for k, baseline in enumerate(resolved):
                out[k, j] = _score_cell(baseline, model, y, on_device, options.get(baseline.name, {}))
            report(j + 1)
    finally:
        report(None)
    return out


def score_tasks(
    labels: Any,
    inputs: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[Any],
    baselines: Sequence[str] = DEFAULT_BASELINES,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: torch.device | str | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> np.ndarray:
    """Scores of M models on T tasks, each task a subset of the rows of one dataset.

    Each model's full arrays are moved to ``device`` once and every task slices its rows there,
    so label building over many episodes reads and uploads every model only once. Each task's
    labels are validated and remapped once and shared by all models.

    Args:
        labels: [N] class ids (or [N, K] regression targets) of the whole dataset.
        inputs: model id -> ``{"features": [N, D], "source_logits": [N, Cs] (optional)}`` over
            the same N rows (the feature-store convention); numpy (e.g. memory-mapped) or torch.
        tasks: T integer row-index arrays into the N rows (one per task).
        baselines, options, device: as in :func:`score_models`.
        progress: True shows a rich progress bar; a callable gets ``(done, total)`` model steps.

    Returns:
        float64 [T, K, M], NaN where a baseline failed (with a warning).

    Raises:
        RegistryError, BaselineInputError: as :func:`score_models`, plus a task whose rows are
            out of range or hold fewer than 2 classes (message names ``tasks[i]``) and a model
            whose arrays do not have N rows.
    """
    full, regression = _shared_labels(labels, device)  # validated once for the whole dataset
    resolved = _resolve_baselines(baselines, regression)
    options = _check_options(options, resolved)
    n = full.shape[0]
    task_rows = [_task_rows(rows, n, t) for t, rows in enumerate(tasks)]
    task_labels = [_task_labels(full, rows, regression, t) for t, rows in enumerate(task_rows)]
    out = np.full((len(task_rows), len(resolved), len(inputs)), np.nan)
    report = _progress_callback(progress, len(inputs))
    try:
        for j, (model, arrays) in enumerate(inputs.items()):
            _check_model_inputs(model, arrays)
            whole = {key: _as_tensor_on(arrays.get(key), device) for key in MODEL_INPUT_KEYS}
            for key, value in whole.items():
                if value is not None and value.shape[0] != n:
                    raise BaselineInputError(
                        f"inputs[{model!r}][{key!r}]: has {value.shape[0]} rows but labels has {n}"
                    )
            for t, rows in enumerate(task_rows):
                sliced = {key: None if value is None else value[rows.to(value.device)] for key, value in whole.items()}
                for k, baseline in enumerate(resolved):
                    out[t, k, j] = _score_cell(baseline, model, task_labels[t], sliced, options.get(baseline.name, {}))
            report(j + 1)
    finally:
        report(None)
    return out


def _task_rows(rows: Any, n: int, index: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(rows))
    if t.ndim != 1 or t.numel() == 0 or t.is_floating_point() or t.dtype == torch.bool:
        raise BaselineInputError(f"tasks[{index}]: expected a non-empty 1-D integer row-index array")
    t = t.to(torch.int64)
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise BaselineInputError(f"tasks[{index}]: row ids must lie in [0, {n}), got [{int(t.min())}, {int(t.max())}]")
    return t


def _task_labels(full: torch.Tensor, rows: torch.Tensor, regression: bool, index: int) -> torch.Tensor:
    """The task's labels, remapped to 0..C-1 for classification (once, shared by all models)."""
    subset = full[rows.to(full.device)]
    if regression:
        return subset
    try:
        return classification_labels(subset)[0]
    except BaselineInputError as err:
        raise BaselineInputError(f"tasks[{index}]: {err}") from None


def _as_tensor_on(array: Any, device: torch.device | str | None) -> torch.Tensor | None:
    if array is None:
        return None
    t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array))  # copies memmaps once
    return t.to(device) if device is not None else t


def _progress_callback(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int | None], None]:
    """``report(done)`` after each model, ``report(None)`` at the end."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from spider.progress import progress_bar

    bar = progress_bar(total, "scoring models", True, transient=True)
    advance = bar.__enter__()
    state = {"done": 0}

    def report(done: int | None) -> None:
        if done is None:
            bar.__exit__(None, None, None)
        else:
            advance(done - state["done"])
            state["done"] = done

    return report
