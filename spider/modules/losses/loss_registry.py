"""Registry of ranking losses (``@register_loss`` in the style of timm / allRank).

A loss is a pure function ``loss(scores [B, M], target_scores [B, M], mask [B, M] bool, **options)
-> scalar tensor`` where ``scores`` are predicted fitness scores, ``target_scores`` the supervision
(higher = better, e.g. Copeland scores) and ``mask`` says which (task, model) pairs are real.
Entries where ``mask`` is False never change the value and receive exactly zero gradient, whatever
they hold (NaN included).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spider.registry import Registry

LossFn = Callable[..., torch.Tensor]

LOSSES: Registry[LossFn] = Registry("loss")


def register_loss(name: str, **meta: object) -> Callable[[LossFn], LossFn]:
    """Decorator registering a loss function under ``name``; returns it unchanged."""
    return LOSSES.register(name, **meta)


def get_loss(name: str) -> LossFn:
    return LOSSES.get(name)


def list_losses(pattern: str = "*") -> list[str]:
    return LOSSES.list(pattern)
