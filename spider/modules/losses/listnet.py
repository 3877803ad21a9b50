"""ListNet's top-1 cross-entropy (Cao et al., 2007)."""

from __future__ import annotations

import torch

from spider.modules._checks import ScorerInputError, check_loss_inputs
from spider.modules.losses.loss_registry import register_loss


def _masked_log_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log_softmax over the True entries of each row; finite everywhere (0-based garbage where
    masked). Rows without any True entry must be excluded by the caller."""
    # A row with no real entry would make logsumexp -inf; let it see all (zeroed) entries instead.
    row_has_any = mask.any(dim=1, keepdim=True)
    visible = mask | ~row_has_any
    lse = torch.logsumexp(x.masked_fill(~visible, float("-inf")), dim=1, keepdim=True)
    return x - lse


@register_loss("listnet")
def listnet_loss(
    scores: torch.Tensor,
    target_scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy between softmax(target / temperature) and softmax(scores), per task.

    Both softmaxes run over the task's real models only. The value is summed over models and
    averaged over tasks with at least one real model. ``temperature`` scales the targets only
    (the scores' scale is learned); Copeland scores range over [0, M - 1], so the default 1
    already puts most target mass on the top few models.

    Args:
        scores: float [B, M] predicted scores.
        target_scores: float [B, M] supervision, higher = better.
        mask: bool [B, M], True = real pair; others change neither value nor gradient.
        temperature: positive float dividing ``target_scores``.

    Returns:
        Scalar tensor; 0 (still differentiable) when the mask is all False.
    """
    check_loss_inputs(scores, target_scores, mask)
    if not temperature > 0:
        raise ScorerInputError(f"temperature: expected a positive number, got {temperature!r}")
    s = torch.where(mask, scores, torch.zeros_like(scores))
    t = torch.where(mask, target_scores, torch.zeros_like(target_scores)).to(s.dtype)
    log_q = _masked_log_softmax(s, mask)
    p = _masked_log_softmax(t / temperature, mask).exp() * mask
    per_task = -(p * log_q).sum(dim=1)
    num_tasks = mask.any(dim=1).sum().clamp_min(1).to(s.dtype)
    return per_task.sum() / num_tasks
