"""torchmetrics wrappers averaging a per-task ranking metric over all tasks seen (DDP-safe).

Each class is a thin shell over one function of ``spider.metrics.functional``: ``update`` computes
the per-task values of a batch ``[B, M]`` in one vectorised call and adds their sum and count to
states reduced with ``sum`` across processes, so ``compute()`` is the mean over every task of every
process. Tasks whose value is undefined (NaN: fewer than two models, constant input) are left out
of the mean and counted in ``num_undefined``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from spider.metrics import functional as F

__all__ = ["PearsonPerTask", "SpearmanPerTask", "Top1Regret", "TopKHit", "WeightedTau"]

class _PerTaskMean(Metric):
    """Mean over tasks of ``_task_values(preds [B, M], target [B, M], mask) -> [B]``.

    Subclasses implement ``_task_values`` with one call into the functional core.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # float64 sums: thousands of tasks of values near 1 keep full precision.
        for name, dtype in (("total", torch.float64), ("num_tasks", torch.int64),
                            ("num_undefined", torch.int64)):
            self.add_state(name, default=torch.tensor(0, dtype=dtype), dist_reduce_fx="sum")

    def _task_values(
        self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def update(
        self, preds: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Adds B tasks.

        Args:
            preds: predicted scores ``[B, M]`` (higher = better).
            target: ground truth ``[B, M]`` (e.g. fine-tuned accuracy, higher = better).
            mask: optional bool ``[B, M]``, True where the model belongs to the task.
        """
        if preds.ndim != 2:
            raise F.MetricInputError(
                f"preds must have shape [B tasks, M models], got {tuple(preds.shape)}"
            )
        values = self._task_values(preds, target, mask).to(self.total.device)
        defined = ~torch.isnan(values)
        self.total += torch.where(defined, values, 0.0).sum()
        self.num_tasks += defined.sum()
        self.num_undefined += (~defined).sum()

    def compute(self) -> torch.Tensor:
        """Mean per-task value (float64 scalar); NaN before any defined task."""
        return self.total / self.num_tasks


class WeightedTau(_PerTaskMean):
    """Mean per-task weighted Kendall's tau (see ``functional.weighted_tau`` and ``PROTOCOLS``).

    Args:
        rank: ``None`` = paper protocol (weights by the truth's ranking), ``True`` = symmetric.
    """

    higher_is_better = True

    def __init__(self, rank: bool | None = None, **kwargs: Any) -> None:
        if rank is not None and not isinstance(rank, bool):
            raise F.MetricInputError(f"rank must be None, True or False, got {rank!r}")
        super().__init__(**kwargs)
        self.rank = rank

    def _task_values(self, preds, target, mask):
        return F.weighted_tau(preds, target, rank=self.rank, mask=mask)


class PearsonPerTask(_PerTaskMean):
    """Mean per-task Pearson correlation between truth and prediction."""

    higher_is_better = True

    def _task_values(self, preds, target, mask):
        return F.pearson(preds, target, mask=mask)


class SpearmanPerTask(_PerTaskMean):
    """Mean per-task Spearman rank correlation between truth and prediction."""

    higher_is_better = True

    def _task_values(self, preds, target, mask):
        return F.spearman(preds, target, mask=mask)


class Top1Regret(_PerTaskMean):
    """Mean per-task top-1 regret (accuracy points lost by picking the predicted best model)."""

    higher_is_better = False

    def _task_values(self, preds, target, mask):
        return F.top1_regret(preds, target, mask=mask)


class TopKHit(_PerTaskMean):
    """Fraction of tasks whose truly best model is among the top-``k`` predicted."""

    higher_is_better = True

    def __init__(self, k: int, **kwargs: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise F.MetricInputError(f"k must be a positive integer, got {k!r}")
        super().__init__(**kwargs)
        self.k = k

    def _task_values(self, preds, target, mask):
        return F.topk_hit(preds, target, self.k, mask=mask)
