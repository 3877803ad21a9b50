"""The one evaluation path: ranking metrics of every method per task, grouped by target.

Functional core (no model, no datamodule): :func:`task_metrics` scores ``preds`` [N, M] against
``target`` [N, M] per task; :func:`evaluate` groups the per-task values by target through an
``indexes`` tensor [N] (as torchmetrics' retrieval metrics do) and returns
``table[metric][method][target | "mean"]``. ``spider fit``'s results tables
(:func:`results_table`) and the benchmark report (:mod:`spider.benchmark`) both call it.

Rows of a results table: the scorer, its re-ranking of the top k (one batched implementation,
:meth:`spider.modules.ReRanker.rerank_batch`), every configured baseline and their aggregate, and
every static prior available for the datamodule (:mod:`spider.priors`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from io import StringIO
from typing import Any, Optional

import numpy as np
import torch

from spider.metrics.functional import PROTOCOLS, top1_regret, weighted_tau

__all__ = ["METRICS", "evaluate", "format_results", "rank_values", "reranked", "results_table",
           "static_priors", "task_metrics"]

#: Metrics of every results table: both weighted-tau protocols and the top-1 regret (points).
METRICS = (*PROTOCOLS, "top1_regret")


def task_metrics(preds: Any, target: Any, mask: Any = None) -> dict[str, torch.Tensor]:
    """``{metric: float64 [N]}`` per task for predictions ``preds`` [N, M] of ``target`` [N, M].

    A False entry of the optional bool ``mask`` [N, M] leaves that model out of the task. A
    non-finite prediction (a baseline that failed on that model) ranks the model below every
    scored one: it is a model the method does not recommend, and leaving it out instead would
    judge the method on an easier, smaller zoo than the others (and measure its top-1 regret
    against a worse best). A task with no finite prediction is undefined (NaN).
    """
    preds_t = torch.as_tensor(np.asarray(preds, dtype=np.float64)) if not isinstance(preds, torch.Tensor) \
        else preds.detach().to(torch.float64)
    target_t = torch.as_tensor(target, dtype=torch.float64, device=preds_t.device)
    present = torch.ones_like(preds_t, dtype=torch.bool) if mask is None else \
        torch.as_tensor(mask, dtype=torch.bool, device=preds_t.device).expand_as(preds_t)
    scored = torch.isfinite(preds_t) & present
    floor = torch.where(scored, preds_t, torch.inf).amin(-1, keepdim=True) - 1.0
    preds_t = torch.where(scored, preds_t, floor.expand_as(preds_t))
    present = present & scored.any(-1, keepdim=True)
    out = {name: weighted_tau(preds_t, target_t, rank=rank, mask=present) for name, rank in PROTOCOLS.items()}
    out["top1_regret"] = top1_regret(preds_t, target_t, mask=present)
    return out


def grouped_mean(values: torch.Tensor, indexes: torch.Tensor, num_groups: int) -> torch.Tensor:
    """float64 [num_groups]: mean of the defined (non-NaN) ``values`` [N] of each group of
    ``indexes`` [N] (int in [0, num_groups)); NaN for a group without a defined value."""
    values = values.to(torch.float64)
    indexes = torch.as_tensor(indexes, dtype=torch.long, device=values.device)
    defined = ~torch.isnan(values)
    total = torch.zeros(num_groups, dtype=torch.float64, device=values.device)
    count = torch.zeros_like(total)
    total.index_add_(0, indexes, torch.where(defined, values, 0.0))
    count.index_add_(0, indexes, defined.to(torch.float64))
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.nan)


def evaluate(predictions: Mapping[str, Any], target: Any, indexes: Any, names: Sequence[str],
             mask: Any = None, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, dict[str, float]]]:
    """Every method's metrics per target and their mean over targets.

    Args:
        predictions: ``{method: preds [N, M]}`` (or [M]: the same scores for every task, a static prior).
        target: true accuracies [N, M].
        indexes: int [N], the target (index into ``names``) each task belongs to.
        names: target names; each gets a column (NaN when no task of it is defined).
        mask: optional bool [N, M] (True = model belongs to the task).

    Returns:
        ``table[metric][method][target]`` with a last column ``"mean"``: the mean over targets of
        each target's mean over its tasks (targets weigh the same whatever their task count).
    """
    target_t = torch.as_tensor(np.asarray(target, dtype=np.float64))
    index_t = torch.as_tensor(np.asarray(indexes), dtype=torch.long).reshape(-1)
    if target_t.ndim != 2 or index_t.shape[0] != target_t.shape[0]:
        raise ValueError(f"evaluate: expected target [N, M] and indexes [N], got {tuple(target_t.shape)} "
                         f"and {tuple(index_t.shape)}")
    if index_t.numel() and (int(index_t.min()) < 0 or int(index_t.max()) >= len(names)):
        raise ValueError(f"evaluate: indexes must lie in [0, {len(names)}), got {sorted(set(index_t.tolist()))}")
    table: dict[str, dict[str, dict[str, float]]] = {m: {} for m in metrics}
    for method, preds in predictions.items():
        preds_t = torch.as_tensor(np.asarray(preds.cpu() if isinstance(preds, torch.Tensor) else preds,
                                             dtype=np.float64))
        if preds_t.ndim == 1:
            preds_t = preds_t.expand_as(target_t)
        values = task_metrics(preds_t, target_t, mask)
        for metric in metrics:
            per_target = grouped_mean(values[metric], index_t, len(names)).tolist()
            row = dict(zip(names, per_target))
            row["mean"] = nanmean(per_target)
            table[metric][method] = row
    return table


def rank_values(order: torch.Tensor) -> torch.Tensor:
    """Scores [B, M] that sort like ``order`` [B, M] (best first): M-1 for the first, 0 for the last."""
    num = order.shape[1]
    values = torch.arange(num - 1, -1, -1, device=order.device, dtype=torch.float64)
    return torch.empty(order.shape, dtype=torch.float64, device=order.device).scatter_(
        1, order, values.expand(order.shape).contiguous())


def reranked(model: Any, datamodule: Any, batch: Mapping[str, torch.Tensor], topk: int) -> torch.Tensor:
    """Rank-valued scores [B, M] (M-1 = best) of the re-ranked order of an evaluation batch
    (:meth:`~spider.modules.ReRanker.rerank_batch` with the datamodule's specific tokens)."""
    result = model.rerank_batch(batch["task_tokens"], batch["task_mask"], topk,
                                lambda top: datamodule.specific_tokens_for(dict(batch), top))
    return rank_values(result.order)


def static_priors(datamodule: Any, params: Optional[Mapping[str, int]] = None) -> dict[str, np.ndarray]:
    """``{prior: scores [M]}`` of every registered static prior whose inputs the datamodule has."""
    from spider.priors import available_priors, prior_scores

    inputs = datamodule.prior_inputs(params)
    return {name: prior_scores(name, inputs) for name in available_priors(inputs)}


@torch.no_grad()
def results_table(model: Any, datamodule: Any, *, stage: str = "test", rerank_topk: int = 0,
                  params: Optional[Mapping[str, int]] = None) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`evaluate` on the ``stage`` ("val" or "test") episodes, in this process (no sharding).

    Returns:
        ``table[metric][method][target | "mean"]``: metric in :data:`METRICS`; methods ``scorer``
        (plus ``rerank@k`` when ``rerank_topk`` > 0), ``datamodule.baseline_names``, then every
        available static prior (``params``: PTM parameter counts, for ``param_count``).
    """
    datamodule.setup("validate")
    loader = datamodule.eval_dataloader(stage)
    names, targets = datamodule.target_names, datamodule.stage_names(stage)
    collected: dict[str, list[torch.Tensor]] = {}
    truth, masks, indexes = [], [], []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            predictions = {"scorer": model(batch["task_tokens"], batch["task_mask"])}
            if rerank_topk > 0:
                predictions[f"rerank@{rerank_topk}"] = reranked(model, datamodule, batch, rerank_topk)
            for k, name in enumerate(datamodule.baseline_names):
                predictions[name] = batch["baseline_scores"][:, k]
            for name, pred in predictions.items():
                collected.setdefault(name, []).append(pred.detach().cpu().to(torch.float64))
            truth.append(batch["truth"].cpu())
            masks.append(batch["truth_mask"].cpu())
            # Columns are the stage's targets: re-index from the datamodule's list of all targets.
            indexes.append(torch.tensor([targets.index(names[t]) for t in batch["target_index"].tolist()]))
    finally:
        model.train(was_training)
    if not truth:
        return {}
    preds: dict[str, Any] = {name: torch.cat(values) for name, values in collected.items()}
    preds.update(static_priors(datamodule, params))
    return evaluate(preds, torch.cat(truth), torch.cat(indexes), targets, mask=torch.cat(masks))


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def format_results(table: Mapping[str, Mapping[str, Mapping[str, float]]], *, title: str = "") -> str:
    """The results table as plain text (rich-rendered): one block per metric, methods as rows,
    target datasets (then their mean) as columns."""
    from rich.console import Console
    from rich.table import Table

    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False, color_system=None)
    for metric, by_method in table.items():
        columns = list(next(iter(by_method.values())).keys()) if by_method else []
        rich_table = Table(title=f"{title}{metric}" if title else metric)
        rich_table.add_column("method")
        for column in columns:
            rich_table.add_column(column, justify="right")
        for method, row in by_method.items():
            rich_table.add_row(method, *(_fmt(row[c]) for c in columns))
        console.print(rich_table)
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:+.3f}"
