"""Mean squared error between predicted and target scores (a regression baseline loss)."""

from __future__ import annotations

import torch

from spider.modules._checks import check_loss_inputs
from spider.modules.losses.loss_registry import register_loss


@register_loss("mse")
def mse_loss(scores: torch.Tensor, target_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (scores - target_scores)^2 over the real (task, model) pairs.

    Unlike the ranking losses this depends on the scale and offset of ``target_scores`` (the
    paper's Table 4 ablation); normalise the targets upstream if needed.

    Args:
        scores: float [B, M] predicted scores.
        target_scores: float [B, M] supervision.
        mask: bool [B, M], True = real pair; others change neither value nor gradient.

    Returns:
        Scalar tensor; 0 (still differentiable) when the mask is all False.
    """
    check_loss_inputs(scores, target_scores, mask)
    s = torch.where(mask, scores, torch.zeros_like(scores))
    t = torch.where(mask, target_scores, torch.zeros_like(target_scores)).to(s.dtype)
    return ((s - t) ** 2).sum() / mask.sum().clamp_min(1).to(s.dtype)
