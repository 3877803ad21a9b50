"""Registry of scorer modules (``@register_scorer`` in the style of timm's ``register_model``).

A scorer is a ``lightning.LightningModule`` class whose ``forward(task_tokens [B, C, Dg],
task_mask [B, C]) -> scores [B, M]`` ranks the M models of a zoo; the config selects it by name
(``get_scorer(name)(**hyperparameters)``). See ``TokenScorer`` for a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from spider.registry import Registry

ScorerT = TypeVar("ScorerT", bound=type)

SCORERS: Registry[type] = Registry("scorer")


def register_scorer(name: str, **meta: Any) -> Callable[[ScorerT], ScorerT]:
    """Class decorator registering a scorer under ``name``; also sets ``cls.scorer_name``."""

    def decorator(cls: ScorerT) -> ScorerT:
        SCORERS.add(name, cls, **meta)
        cls.scorer_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def get_scorer(name: str) -> type:
    return SCORERS.get(name)


def list_scorers(pattern: str = "*") -> list[str]:
    return SCORERS.list(pattern)
