"""A pairwise logistic loss weighted like the benchmark's weighted Kendall tau (top pairs count most)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spider.modules._checks import check_loss_inputs
from spider.modules.losses.loss_registry import register_loss


@register_loss("wtau_pairwise")
def wtau_pairwise_loss(scores: torch.Tensor, target_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logistic loss on every pair of a task that the targets order, weighted as weighted tau weighs it.

    ``scipy.stats.weightedtau(truth, pred, rank=None)`` (the paper's metric) gives the pair of models
    i, j the weight ``1/(r_i + 1) + 1/(r_j + 1)``, ``r`` their 0-based rank by the truth (hyperbolic,
    additive). This loss gives the pair ``softplus(s_j - s_i)`` (i the better by ``target_scores``)
    that weight, so mistakes among the best models cost most, as they do in the metric; the
    Plackett-Luce losses weigh every position of the list alike. Tied targets order no pair; tied
    models share the better rank. Cost O(B M^2): for zoos of hundreds of models, not millions.

    Args:
        scores: float [B, M] predicted scores.
        target_scores: float [B, M] supervision, higher = better.
        mask: bool [B, M], True = real pair; others change neither value nor gradient.

    Returns:
        Scalar tensor: per task the weighted mean over its ordered pairs, averaged over tasks with
        at least one; 0 (still differentiable) when no task has one.
    """
    check_loss_inputs(scores, target_scores, mask)
    s = torch.where(mask, scores, torch.zeros_like(scores))
    t = torch.where(mask, target_scores, torch.zeros_like(target_scores)).to(s.dtype)
    both = mask[:, :, None] & mask[:, None, :]  # [B, i, j]
    better = (t[:, :, None] > t[:, None, :]) & both  # i above j in the truth
    rank = ((t[:, None, :] > t[:, :, None]) & both).sum(-1).to(s.dtype)  # r_i: real models above i
    inv = 1.0 / (rank + 1.0)
    weight = torch.where(better, inv[:, :, None] + inv[:, None, :], torch.zeros_like(better, dtype=s.dtype))
    pair_loss = F.softplus(s[:, None, :] - s[:, :, None])  # [B, i, j]: softplus(s_j - s_i)
    per_task = (weight * pair_loss).sum((1, 2))
    total = weight.sum((1, 2))
    counted = total > 0
    if not counted.any():
        return (s * 0.0).sum()
    return (per_task[counted] / total[counted]).mean()
