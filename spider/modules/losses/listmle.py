"""ListMLE (Xia et al., 2008), as in allRank."""

from __future__ import annotations

import torch

from spider.modules.losses._plackett_luce import plackett_luce_terms
from spider.modules.losses.loss_registry import register_loss


@register_loss("listmle")
def listmle_loss(
    scores: torch.Tensor,
    target_scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    ties: str = "breslow",
) -> torch.Tensor:
    """ListMLE: Plackett-Luce negative log-likelihood summed over each list, averaged over tasks.

    Honest note: this is the same likelihood as the paper's ``listwise`` loss; only the
    normalisation differs (sum over a task's positions, then mean over tasks, instead of a mean
    over all (task, position) pairs). With every task holding n real models and no ties,
    ``listmle == (n - 1) * listwise`` exactly; with masks the tasks are weighted differently.
    Under Adam the constant factor barely matters, so the paper's ablation gap between the two
    (Table 4) must come from elsewhere, e.g. the authors' ListMLE breaking ties at random (it
    shuffles before sorting) and using ``log(x + 1e-10)``, both of which this version avoids.

    Args:
        scores: float [B, M] predicted scores.
        target_scores: float [B, M] supervision, higher = better.
        mask: bool [B, M], True = real pair; others change neither value nor gradient.
        ties: ``"breslow"`` (default) or ``"stable"``, as in ``listwise``.

    Returns:
        Scalar tensor; 0 (still differentiable) when no task has two real models.
    """
    terms, counted = plackett_luce_terms(scores, target_scores, mask, ties=ties)
    num_tasks = counted.any(dim=1).sum().clamp_min(1).to(terms.dtype)
    return terms.sum() / num_tasks
