"""Input checks shared by the scorer modules and the ranking losses.

Every check raises :class:`ScorerInputError` (a ``SpiderError``) with a one-line message naming
the argument and what was expected, so a wrongly shaped batch fails loudly at the boundary
instead of broadcasting silently deep inside the attention maths.
"""

from __future__ import annotations

import torch

from spider.errors import SpiderError


class ScorerInputError(SpiderError, ValueError):
    """A tensor given to a scorer or a ranking loss has the wrong shape, dtype or content."""


def check_bool(name: str, mask: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ScorerInputError(f"{name}: expected a bool tensor (True = real entry), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ScorerInputError(f"{name}: expected shape {list(shape)}, got {list(mask.shape)}")


def check_float(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ScorerInputError(f"{name}: expected a floating-point tensor, got {got}")
    if x.ndim != ndim:
        raise ScorerInputError(f"{name}: expected {ndim} dims, got shape {list(x.shape)}")


def check_loss_inputs(
    scores: torch.Tensor, target_scores: torch.Tensor, mask: torch.Tensor
) -> None:
    """``scores`` and ``target_scores`` float [B, M]; ``mask`` bool [B, M]."""
    check_float("scores", scores, 2)
    check_float("target_scores", target_scores, 2)
    if target_scores.shape != scores.shape:
        raise ScorerInputError(
            f"target_scores: expected shape {list(scores.shape)} like scores, "
            f"got {list(target_scores.shape)}"
        )
    check_bool("mask", mask, tuple(scores.shape))
