"""The paper's listwise ranking loss (Model Spider, Eq. 4)."""

from __future__ import annotations

import torch

from spider.modules.losses._plackett_luce import plackett_luce_terms
from spider.modules.losses.loss_registry import register_loss


@register_loss("listwise", paper=True)
def listwise_loss(
    scores: torch.Tensor,
    target_scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    ties: str = "breslow",
) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the true order, averaged over positions.

    For each position k of the true order (from ``target_scores``, higher = better), the softmax
    cross-entropy of the true k-th model against the models ranked at or below k; the terms are
    averaged over every counted (task, position) pair of the batch, where a position counts if
    it is real and its candidate set holds >= 2 models (the last position of a strict order is
    always 0 and is left out). This is the normalisation of the authors' implementation
    (``nll_loss`` mean over B * (M - 1) positions). Mathematically this is ListMLE
    (Xia et al., 2008) divided by the number of positions: see ``listmle``.

    Args:
        scores: float [B, M] predicted scores.
        target_scores: float [B, M] supervision (e.g. Copeland scores), higher = better.
        mask: bool [B, M], True = real pair; others change neither value nor gradient.
        ties: ``"breslow"`` (default, order-independent) or ``"stable"`` (by model index);
            see ``spider.modules.losses._plackett_luce``.

    Returns:
        Scalar tensor; 0 (still differentiable) when no task has two real models.
    """
    terms, counted = plackett_luce_terms(scores, target_scores, mask, ties=ties)
    return terms.sum() / counted.sum().clamp_min(1).to(terms.dtype)
