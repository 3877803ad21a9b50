"""Ranking losses, one pure function per file, selectable by name.

Signature of every loss: ``loss(scores [B, M], target_scores [B, M], mask [B, M] bool,
**options) -> scalar tensor``. Importing this package registers the built-in losses:

- ``listwise`` (the paper's Eq. 4; Plackett-Luce NLL averaged over positions),
- ``listmle`` (the same likelihood summed per task, averaged over tasks),
- ``listnet`` (top-1 cross-entropy), ``mse``,
- ``wtau_pairwise`` (pairwise logistic, pairs weighted as the weighted-tau metric weighs them).

Example:
    >>> from spider.modules.losses import get_loss
    >>> loss = get_loss("listwise")(scores, target_scores, mask)  # doctest: +SKIP
"""

from spider.modules.losses import listmle, listnet, listwise, mse, wtau_pairwise  # noqa: F401  (registers)
from spider.modules.losses.loss_registry import LOSSES, get_loss, list_losses, register_loss

__all__ = ["LOSSES", "get_loss", "list_losses", "register_loss"]
