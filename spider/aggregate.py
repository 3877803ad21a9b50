"""Rank aggregation: merge K methods' transferability scores of M models into one ranking.

Model Spider builds its training labels by aggregating the rankings of several baselines (NCE,
LEEP, LogME, H-Score) with Copeland's method (paper, section 4.3 and eq. 8). ``borda`` is a second,
smoother aggregator; both are registered (``get_aggregator("copeland")``).

Conventions shared by all aggregators:

* ``scores`` has shape ``[..., K, M]`` (K methods, M models; leading dims are independent tasks),
  higher = better for every method. numpy arrays, lists and torch tensors are accepted; the result
  has the input's kind (numpy in, numpy out; torch in, torch out on the same device).
* A NaN score means the method failed on that model: the method abstains on every pair involving
  it. A method that gives two models the same score abstains on that pair too.
* A model with no finite score from any method is *unscored*: its aggregate score is NaN, it ranks
  last and it does not affect the other models' scores (as if it were not in the zoo).
* ``ranking`` lists model indices best first. Equal aggregate scores are ordered by the Borda
  score (higher first), then by model index (lower first), so the ranking is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from spider.errors import SpiderError
from spider.registry import Registry

__all__ = [
    "AGGREGATORS",
    "Aggregate",
    "AggregationInputError",
    "borda",
    "copeland",
    "get_aggregator",
    "list_aggregators",
    "register_aggregator",
]


class AggregationInputError(SpiderError, ValueError):
    """Scores given to an aggregator are malformed."""


class Aggregate(NamedTuple):
    """Result of an aggregator (numpy arrays or torch tensors, following the input).

    Attributes:
        scores: float64 ``[..., M]``, higher = better; NaN for unscored models.
        ranking: int64 ``[..., M]``, model indices from best to worst.
    """

    scores: Any
    ranking: Any


Aggregator = Callable[[Any], Aggregate]
AGGREGATORS: Registry[Aggregator] = Registry("aggregator")


def register_aggregator(name: str, **meta: Any) -> Callable[[Aggregator], Aggregator]:
    """Decorator registering ``fn(scores [..., K, M]) -> Aggregate`` under ``name``."""
    return AGGREGATORS.register(name, **meta)


def get_aggregator(name: str) -> Aggregator:
    return AGGREGATORS.get(name)


def list_aggregators(pattern: str = "*") -> list[str]:
    return AGGREGATORS.list(pattern)


def _as_scores(scores: Any) -> tuple[torch.Tensor, bool]:
    """float64 tensor ``[..., K, M]`` and whether the caller gave a torch tensor."""
    is_torch = isinstance(scores, torch.Tensor)
    if is_torch:
        t = scores.detach().to(torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise AggregationInputError(
                "scores: expected a numeric array [K methods, M models], "
                f"got {type(scores).__name__}"
            ) from err
    if t.ndim < 2 or t.shape[-1] == 0 or t.shape[-2] == 0:
        raise AggregationInputError(
            "scores: expected shape [..., K methods, M models] with K, M >= 1, "
            f"got {tuple(t.shape)}"
        )
    return t, is_torch


def _pairwise_votes(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-method pairwise preferences.

    Returns ``(above, below, tied)``, each bool ``[..., K, M, M]``: method k scores model i above /
    below / equal to model j, both scores finite-or-infinite but not NaN. NaN compares false with
    everything, so a NaN score makes the method abstain on all pairs involving that model.
    """
    si, sj = scores[..., :, :, None], scores[..., :, None, :]
    return si > sj, si < sj, si == sj


def _finish(
    agg: torch.Tensor, tiebreak: torch.Tensor, scored: torch.Tensor, is_torch: bool
) -> Aggregate:
    """Sets unscored models to NaN, ranks by (agg desc, tiebreak desc, index asc)."""
    agg = torch.where(scored, agg, torch.nan)
    # Both keys are >= 0 for scored models, so -1 sends unscored models to the end.
    primary = torch.where(scored, agg, -1.0)
    secondary = torch.where(scored, tiebreak, -1.0)
    # Stable sorts from the least to the most significant key (index order is the starting order).
    order = torch.sort(secondary, dim=-1, descending=True, stable=True).indices
    resort = torch.sort(primary.gather(-1, order), dim=-1, descending=True, stable=True).indices
    ranking = order.gather(-1, resort)
    if is_torch:
        return Aggregate(agg, ranking)
    return Aggregate(agg.cpu().numpy(), ranking.cpu().numpy())


def _borda_scores(above: torch.Tensor, tied: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean Borda count over the methods that scored each model; ``[..., M]`` float64.

    Method k gives model i one point per model it scores below i and half a point per other model it
    scores equally, rescaled by ``(M' - 1) / (n_k - 1)`` when it scored only ``n_k`` of the M'
    scored models (so a method that failed on some models still spreads the full range). A method
    that scored a single model gives it the neutral ``(M' - 1) / 2``. Without NaNs this is the
    classic Borda count divided by K.
    """
    m = valid.shape[-1]
    top = (valid.any(-2).sum(-1) - 1).to(torch.float64)[..., None, None]  # M' - 1, per task
    others = ~torch.eye(m, dtype=torch.bool, device=valid.device)
    points = above.sum(-1).to(torch.float64) + 0.5 * (tied & others).sum(-1).to(torch.float64)
    n_scored = valid.sum(-1, keepdim=True).to(torch.float64)  # [..., K, 1]
    scale = top / (n_scored - 1).clamp(min=1.0)
    points = torch.where(n_scored > 1, points * scale, top / 2.0)
    voters = valid.sum(-2).to(torch.float64)
    return torch.where(valid, points, 0.0).sum(-2) / voters.clamp(min=1.0)


@register_aggregator("copeland", paper="Model Spider eq. 8")
def copeland(scores: Any) -> Aggregate:
    """Copeland aggregation of K methods' scores of M models (Model Spider eq. 8).

    Model i's score is the number of models j that a majority of methods rank below i, plus 0.5 for
    each j where the vote ties. *Majority* means a strict majority of the methods that express a
    preference on the pair: a method abstains when it scores i and j equally or when either score
    is NaN. So i beats j iff (methods with i above j) > (methods with j above i); a pair on which
    every method abstains is a tie. Scored models get values in ``[0, M' - 1]`` (M' = scored
    models); a Condorcet winner gets ``M' - 1``.

    Args:
        scores: ``[..., K, M]``, higher = better for each method; NaN = method failed on the model.

    Returns:
        ``Aggregate(scores [..., M] float64, ranking [..., M] int64 best first)``; equal Copeland
        scores are ordered by ``borda`` then by index; unscored models are NaN and rank last.
    """
    s, is_torch = _as_scores(scores)
    above, below, tied = _pairwise_votes(s)
    valid = ~torch.isnan(s)
    scored = valid.any(-2)  # [..., M]
    wins, losses = above.sum(-3), below.sum(-3)  # [..., M, M]: methods preferring i / j
    m = s.shape[-1]
    others = ~torch.eye(m, dtype=torch.bool, device=s.device)
    contest = others & scored[..., :, None] & scored[..., None, :]
    value = (contest & (wins > losses)).sum(-1) + 0.5 * (contest & (wins == losses)).sum(-1)
    return _finish(value.to(torch.float64), _borda_scores(above, tied, valid), scored, is_torch)


@register_aggregator("borda")
def borda(scores: Any) -> Aggregate:
    """Borda aggregation: mean over methods of each model's Borda count (see ``_borda_scores``).

    Per method, a model earns one point per model scored below it and half a point per tie; NaN
    scores abstain (the method's points are rescaled to the models it did score). Returns
    ``Aggregate(scores [..., M] float64 in [0, M' - 1], ranking [..., M] int64)`` with M' the
    scored models; equal scores are ordered by index; unscored models are NaN and rank last.
    """
    s, is_torch = _as_scores(scores)
    above, _, tied = _pairwise_votes(s)
    valid = ~torch.isnan(s)
    value = _borda_scores(above, tied, valid)
    return _finish(value, torch.zeros_like(value), valid.any(-2), is_torch)
