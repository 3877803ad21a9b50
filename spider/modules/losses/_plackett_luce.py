"""Shared core of the Plackett-Luce losses (``listwise`` and ``listmle``): per-model terms.

For one task with true order tau (tau(1) = best model) and predicted scores s, the Plackett-Luce
negative log-likelihood of the true order is

    sum_k  -log( exp(s[tau(k)]) / sum_{j >= k} exp(s[tau(j)]) )

i.e. for each position k a softmax cross-entropy of the true k-th model against the models ranked
at or below it. The two losses only normalise these terms differently.

Ties (equal ``target_scores``, common with Copeland's half points) are handled deterministically:
- ``ties="breslow"`` (default): every model of a tie group uses the whole group plus everything
  below it as its candidate set (Breslow's rule for tied events in Cox partial likelihood). The
  value does not depend on the model order inside the zoo, and on a strict order it is exactly
  the loss above.
- ``ties="stable"``: ties are broken by model index (lower index ranks higher), as a stable sort
  would; the authors' code breaks ties by whatever order its argsort returned. This teaches a
  consistent preference for low-index models among tied ones, hence not the default.
Equality is exact float equality.
"""

from __future__ import annotations

import torch

from spider.modules._checks import ScorerInputError, check_loss_inputs

TIE_RULES = ("breslow", "stable")


def plackett_luce_terms(
    scores: torch.Tensor, target_scores: torch.Tensor, mask: torch.Tensor, ties: str = "breslow"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position Plackett-Luce terms.

    Args:
        scores: float [B, M] predicted scores.
        target_scores: float [B, M] supervision, higher = better.
        mask: bool [B, M], True = real (task, model) pair.
        ties: ``"breslow"`` or ``"stable"`` (see module docstring).

    Returns:
        ``(terms, counted)``, both [B, M] in true-order positions (not model order):
        ``terms`` float, the -log-likelihood of each position (0 where not counted);
        ``counted`` bool, True for real positions whose candidate set has >= 2 models (a
        one-model candidate set gives an identically zero term carrying no information).
    """
    check_loss_inputs(scores, target_scores, mask)
    if ties not in TIE_RULES:
        raise ScorerInputError(f"ties: expected one of {list(TIE_RULES)}, got {ties!r}")
    batch, num = scores.shape
    # Neutralise padded entries first so that nothing they hold (NaN, inf) can leak into the
    # value or the gradient; torch.where passes zero gradient to the unselected input.
    s = torch.where(mask, scores, torch.zeros_like(scores))
    t = torch.where(mask, target_scores, torch.zeros_like(target_scores)).to(s.dtype)

    # Sort padding FIRST, then real models by target descending (stable: ties by index). With
    # padding in front, the suffix sums of real positions only ever contain real models.
    order = torch.argsort(t, dim=1, descending=True, stable=True)
    padding_first = torch.argsort(mask.gather(1, order).to(torch.int8), dim=1, stable=True)
    order = order.gather(1, padding_first)
    s_sorted = s.gather(1, order)
    t_sorted = t.gather(1, order)
    m_sorted = mask.gather(1, order)

    # log sum_{j >= k} exp(s_j) for every k, computed stably from the right.
    suffix_lse = torch.logcumsumexp(s_sorted.flip(1), dim=1).flip(1)
    position = torch.arange(num, device=s.device).expand(batch, num)
    if ties == "breslow":
        starts_group = torch.ones_like(m_sorted)
        starts_group[:, 1:] = (t_sorted[:, 1:] != t_sorted[:, :-1]) | (
            m_sorted[:, 1:] != m_sorted[:, :-1]
        )
        group_start = torch.where(starts_group, position, torch.zeros_like(position))
        group_start = group_start.cummax(dim=1).values
    else:
        group_start = position
    terms = suffix_lse.gather(1, group_start) - s_sorted
    counted = m_sorted & (num - group_start >= 2)
    terms = torch.where(counted, terms, torch.zeros_like(terms))
    return terms, counted
