"""Results tables: weighted tau per target of the scorer, its re-ranking, every baseline and the aggregate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from io import StringIO
from typing import Any

import torch

from spider.metrics.functional import PROTOCOLS, weighted_tau

__all__ = ["format_results", "reranked", "results_table"]


@torch.no_grad()
def results_table(model: Any, datamodule: Any, *, stage: str = "test",
                  rerank_topk: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Weighted tau per target of ``stage`` ("val" or "test") in this process (no sharding):
    each task's weighted tau averaged per target dataset and over targets (key ``"mean"``).

    Returns:
        ``table[protocol][method][target]``: protocol in :data:`PROTOCOLS`; method ``scorer``
        (plus ``rerank@k`` when ``rerank_topk`` > 0), then ``datamodule.baseline_names``.
    """
    datamodule.setup("validate")
    loader = datamodule.eval_dataloader(stage)
    names, targets = datamodule.target_names, datamodule.stage_names(stage)
    methods = ["scorer"] + ([f"rerank@{rerank_topk}"] if rerank_topk > 0 else []) + list(datamodule.baseline_names)
    per_task = {p: {m: {t: [] for t in targets} for m in methods} for p in PROTOCOLS}
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
            truth, truth_mask = batch["truth"], batch["truth_mask"]
            for name, pred in predictions.items():
                mask = truth_mask & torch.isfinite(pred)
                for protocol, rank in PROTOCOLS.items():
                    values = weighted_tau(truth, torch.nan_to_num(pred), rank=rank, mask=mask)
                    for t, value in zip(batch["target_index"].tolist(), values.tolist()):
                        per_task[protocol][name][names[t]].append(value)
    finally:
        model.train(was_training)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for protocol, by_method in per_task.items():
        table[protocol] = {}
        for name, by_target in by_method.items():
            row = {t: _nanmean(v) for t, v in by_target.items()}
            row["mean"] = _nanmean(list(row.values()))
            table[protocol][name] = row
    return table


def reranked(model: Any, datamodule: Any, batch: Mapping[str, torch.Tensor], topk: int) -> torch.Tensor:
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
