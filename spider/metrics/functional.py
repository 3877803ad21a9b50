"""Ranking metrics between true fine-tuned accuracies and predicted PTM scores (functional core).

Every function takes ``preds`` (predicted scores, higher = better) and ``target`` (true
fine-tuned accuracies), in that order as torchmetrics does, of shape ``[..., M]`` (M models of one
task per last-dim row; leading dims are independent tasks) and an optional boolean ``mask`` of the same shape
(True = this model takes part in this task). Inputs may be numpy arrays, lists or torch tensors
(CPU or CUDA); work happens in float64 on the input's device and the result is a float64 tensor of
shape ``[...]`` (0-d for 1-D inputs; ``float(result)`` gives a Python number). A task whose value
is undefined (too few models, a constant input) yields NaN: the metric classes skip those.

Everything is vectorised over tasks and pairs of models (``[..., M, M]`` comparison tensors), so
no Python loop runs over tasks or models; M is a model zoo (tens to hundreds), so O(M^2) is cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spider.errors import SpiderError

__all__ = [
    "PROTOCOLS",
    "MetricInputError",
    "pearson",
    "spearman",
    "top1_regret",
    "topk_hit",
    "weighted_tau",
]

#: Named weighted-tau protocols, as reports should cite them, mapped to ``weighted_tau``'s ``rank``.
#: ``wtau_paper``: ``scipy.stats.weightedtau(target, preds, rank=None)``, the protocol of the Model
#: Spider / LogME code: pairs are weighted by the *truth's* ranking, so mistakes among the truly
#: best models cost most (asymmetric). ``wtau_symmetric``: scipy's default ``rank=True``, the mean
#: of the truth-weighted and the prediction-weighted values.
PROTOCOLS: dict[str, bool | None] = {"wtau_paper": None, "wtau_symmetric": True}


class MetricInputError(SpiderError, ValueError):
    """Inputs to a ranking metric are malformed (shapes, mask, arguments)."""


def _as_float64(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise MetricInputError(
                f"{name}: expected a numeric array, got {type(x).__name__}"
            ) from err
    if device is not None:
        t = t.to(device)
    if t.ndim == 0:
        raise MetricInputError(f"{name}: expected shape [..., M], got a scalar")
    return t.to(torch.float64)


def _prepare(preds: Any, target: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Converts inputs to float64 tensors on one device and returns ``(truth, pred, mask)``."""
    truth_t = _as_float64(target, "target")
    pred_t = _as_float64(preds, "preds", truth_t.device)
    if truth_t.shape != pred_t.shape:
        raise MetricInputError(
            f"preds and target must have the same shape [..., M], got {tuple(pred_t.shape)} "
            f"and {tuple(truth_t.shape)}"
        )
    if mask is None:
        mask_t = torch.ones(truth_t.shape, dtype=torch.bool, device=truth_t.device)
    else:
        mask_t = torch.as_tensor(mask, device=truth_t.device)
        if mask_t.dtype != torch.bool:
            raise MetricInputError(
                f"mask must be boolean (True = model present), got {mask_t.dtype}"
            )
        if mask_t.shape != truth_t.shape:
            raise MetricInputError(
                f"mask must have the shape of target {tuple(truth_t.shape)}, "
                f"got {tuple(mask_t.shape)}"
            )
    return truth_t, pred_t, mask_t


def _pairwise_order(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(greater, equal)``, each ``[..., M, M]`` bool: ``x_i > x_j`` and ``x_i == x_j``.

    NaN counts as the smallest value and NaNs tie with each other (scipy's ``weightedtau`` rule).
    """
    nan = torch.isnan(x)
    xi, xj = x[..., :, None], x[..., None, :]
    nan_i, nan_j = nan[..., :, None], nan[..., None, :]
    greater = (xi > xj) | (~nan_i & nan_j)
    equal = (xi == xj) | (nan_i & nan_j)
    return greater, equal


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[..., M, M]`` bool: both models present and ``i < j`` (each unordered pair once)."""
    idx = torch.arange(mask.shape[-1], device=mask.device)
    upper = idx[:, None] < idx[None, :]  # (bool triu is oddly slow on CPU)
    return mask[..., :, None] & mask[..., None, :] & upper


def _decreasing_rank(
    x_gt: torch.Tensor,
    x_eq: torch.Tensor,
    y_gt: torch.Tensor,
    y_eq: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Rank (0 = first) of each present model in decreasing lexicographic order of ``(x, y)``.

    Models tied in both x and y are ordered by decreasing index, as scipy's reversed stable
    ``lexsort`` does (the weighted tau does not depend on that order, but summation does, a bit).
    Returns int64 ``[..., M]`` (values at absent models are meaningless).
    """
    m = mask.shape[-1]
    idx = torch.arange(m, device=mask.device)
    later = idx[None, :] > idx[:, None]  # [i, j]: j > i
    # ahead[..., i, j]: model j comes before model i.
    ahead = x_gt.transpose(-1, -2) | (x_eq & (y_gt.transpose(-1, -2) | (y_eq & later)))
    return (ahead & mask[..., None, :]).sum(-1)


def _weighted_tau_one_way(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, rank: bool | None
) -> torch.Tensor:
    """Vigna's additive hyperbolic weighted tau with weights from ``rank`` (None: by (x, y))."""
    x_gt, x_eq = _pairwise_order(x)
    y_gt, y_eq = _pairwise_order(y)
    if rank is None:
        position = _decreasing_rank(x_gt, x_eq, y_gt, y_eq, mask)
    else:  # rank=False: the element's position among the present models
        position = mask.long().cumsum(-1) - 1
    weight = torch.where(mask, 1.0 / (position.to(torch.float64) + 1.0), 0.0)
    pair_weight = (weight[..., :, None] + weight[..., None, :]) * _pair_mask(mask)

    sign_x = x_gt.to(torch.float64) - x_gt.transpose(-1, -2).to(torch.float64)
    sign_y = y_gt.to(torch.float64) - y_gt.transpose(-1, -2).to(torch.float64)
    concordance = (pair_weight * sign_x * sign_y).sum((-2, -1))
    # Weight of pairs not tied in x (resp. y); exactly 0 for a constant input, so tau becomes NaN.
    untied_x = (pair_weight * (~x_eq)).sum((-2, -1))
    untied_y = (pair_weight * (~y_eq)).sum((-2, -1))
    tau = concordance / torch.sqrt(untied_x) / torch.sqrt(untied_y)
    return tau.clamp(-1.0, 1.0)


def weighted_tau(preds: Any, target: Any, rank: bool | None = None, mask: Any = None) -> torch.Tensor:
    """Weighted Kendall's tau: ``scipy.stats.weightedtau(target, preds, rank=rank).statistic``.

    Hyperbolic weigher ``1 / (r + 1)`` and additive pair weights (scipy's defaults). NaN values
    count as the smallest score, as in scipy; use ``mask`` for missing models instead.

    Args:
        preds: predicted scores ``[..., M]``, higher = better.
        target: true accuracies ``[..., M]`` (which argument is the truth matters for ``rank=None``).
        rank: ``None`` (``PROTOCOLS["wtau_paper"]``): weights by the decreasing rank of ``target``,
            ties broken by ``preds``. ``True`` (``PROTOCOLS["wtau_symmetric"]``): the mean of that
            and the same with the arguments swapped. ``False``: weights by position in the array.
        mask: optional bool ``[..., M]``; False entries are left out of the task.

    Returns:
        float64 tensor ``[...]`` in [-1, 1]; NaN where a task has fewer than two models or a
        constant truth or prediction.
    """
    if rank is not None and not isinstance(rank, bool):
        raise MetricInputError(f"rank must be None, True or False, got {rank!r}")
    truth_t, pred_t, mask_t = _prepare(preds, target, mask)
    if rank is True:
        forward = _weighted_tau_one_way(truth_t, pred_t, mask_t, None)
        backward = _weighted_tau_one_way(pred_t, truth_t, mask_t, None)
        return (forward + backward) / 2
    return _weighted_tau_one_way(truth_t, pred_t, mask_t, rank)


def _masked_pearson(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.to(torch.float64)
    count = weight.sum(-1, keepdim=True)
    xc = (x - (x * weight).sum(-1, keepdim=True) / count) * weight
    yc = (y - (y * weight).sum(-1, keepdim=True) / count) * weight
    r = (xc * yc).sum(-1) / torch.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    r = r.clamp(-1.0, 1.0)
    # Decide constancy exactly (rounding in the mean would hide it) and require two models.
    undefined = _is_constant(x, mask) | _is_constant(y, mask) | (count.squeeze(-1) < 2)
    return torch.where(undefined, torch.nan, r)


def _is_constant(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    high = torch.where(mask, x, -torch.inf).amax(-1)
    low = torch.where(mask, x, torch.inf).amin(-1)
    return high == low


def pearson(preds: Any, target: Any, mask: Any = None) -> torch.Tensor:
    """Pearson correlation per task (``scipy.stats.pearsonr``); ``[..., M]`` -> ``[...]``.

    NaN where a task has fewer than two models or a constant input.
    """
    truth_t, pred_t, mask_t = _prepare(preds, target, mask)
    return _masked_pearson(truth_t, pred_t, mask_t)


def _average_rank(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1-based ranks among present entries, ties sharing their mean (``scipy.stats.rankdata``)."""
    present = mask[..., None, :]
    below = ((x[..., None, :] < x[..., :, None]) & present).sum(-1)
    tied = ((x[..., None, :] == x[..., :, None]) & present).sum(-1)
    return below.to(torch.float64) + (tied.to(torch.float64) + 1.0) / 2.0


def spearman(preds: Any, target: Any, mask: Any = None) -> torch.Tensor:
    """Spearman rank correlation per task (``scipy.stats.spearmanr``, average ranks for ties)."""
    truth_t, pred_t, mask_t = _prepare(preds, target, mask)
    return _masked_pearson(_average_rank(truth_t, mask_t), _average_rank(pred_t, mask_t), mask_t)


def top1_regret(preds: Any, target: Any, mask: Any = None) -> torch.Tensor:
    """Best true accuracy minus the true accuracy of the model predicted best, per task.

    Units are those of ``truth`` (accuracy points). When several models share the highest
    prediction, the result is the expected regret of picking one of them uniformly at random (the
    mean over the tied models), so a constant prediction earns no lucky zero. NaN for an empty task.
    """
    truth_t, pred_t, mask_t = _prepare(preds, target, mask)
    best_truth = torch.where(mask_t, truth_t, -torch.inf).amax(-1)
    best_pred = torch.where(mask_t, pred_t, -torch.inf).amax(-1, keepdim=True)
    chosen = mask_t & (pred_t == best_pred)
    chosen_truth = (torch.where(chosen, truth_t, 0.0)).sum(-1) / chosen.sum(-1)
    regret = best_truth - chosen_truth
    return torch.where(mask_t.any(-1), regret, torch.nan)


def topk_hit(preds: Any, target: Any, k: int, mask: Any = None) -> torch.Tensor:
    """1.0 if a truly best model is among the ``k`` models with the highest prediction, else 0.0.

    Ties in the prediction are broken uniformly at random and the result is the hit probability
    (it is 0 or 1 whenever the cut at ``k`` splits no tie). With several truly best models (tied
    accuracy), any of them counts. NaN for an empty task.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MetricInputError(f"k must be a positive integer, got {k!r}")
    truth_t, pred_t, mask_t = _prepare(preds, target, mask)
    is_best = mask_t & (truth_t == torch.where(mask_t, truth_t, -torch.inf).amax(-1, keepdim=True))
    # Only the truly best models with the highest prediction matter: the others sit below them.
    best_pred = torch.where(is_best, pred_t, -torch.inf).amax(-1, keepdim=True)
    ahead = (mask_t & (pred_t > best_pred)).sum(-1)  # placed before the tie group for sure
    tie_size = (mask_t & (pred_t == best_pred)).sum(-1)  # tie group of size e ...
    tie_best = (is_best & (pred_t == best_pred)).sum(-1)  # ... holding t truly best models
    slots = (k - ahead).clamp(min=0).minimum(tie_size)  # top-k places left for the tie group
    # P(no truly best in the `slots` places) = C(e - t, s) / C(e, s) = prod_i (e - t - i) / (e - i).
    i = torch.arange(k, device=truth_t.device, dtype=torch.float64)
    e, t, s = (v.to(torch.float64)[..., None] for v in (tie_size, tie_best, slots))
    factor = torch.where(i < s, (e - t - i) / (e - i).clamp(min=1.0), 1.0).clamp(min=0.0)
    hit = 1.0 - factor.prod(-1)
    return torch.where(mask_t.any(-1), hit, torch.nan)
