"""Registry of transferability baselines (``@register_baseline`` in the style of timm).

A baseline is a callable ``fn(*, features, labels, source_logits=None, **options) -> float``
(higher = better). ``needs`` says which inputs it reads (``"features"``, ``"source_logits"``),
``tasks`` which label kinds it supports (``"classification"``, ``"regression"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spider.registry import Registry

_VALID_NEEDS = frozenset({"features", "source_logits"})
_VALID_TASKS = frozenset({"classification", "regression"})


@dataclass(frozen=True)
class Baseline:
    """A registered transferability score and what it needs."""

    name: str
    fn: Callable[..., float]
    needs: frozenset[str]
    tasks: frozenset[str]
    higher_is_better: bool = True
    deterministic: bool = True
    doc: str = field(default="", compare=False)

    def __call__(self, **inputs: Any) -> float:
        return self.fn(**inputs)


BASELINES: Registry[Baseline] = Registry("baseline")


def register_baseline(
    name: str,
    *,
    needs: tuple[str, ...] | str = ("features",),
    tasks: tuple[str, ...] | str = ("classification",),
    higher_is_better: bool = True,
    deterministic: bool = True,
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register ``fn`` as baseline ``name``; returns ``fn`` unchanged."""
    needs_set = frozenset((needs,) if isinstance(needs, str) else needs)
    tasks_set = frozenset((tasks,) if isinstance(tasks, str) else tasks)
    if not needs_set <= _VALID_NEEDS:
        raise ValueError(f"baseline {name!r}: needs must be within {sorted(_VALID_NEEDS)}")
    if not tasks_set <= _VALID_TASKS:
        raise ValueError(f"baseline {name!r}: tasks must be within {sorted(_VALID_TASKS)}")

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        BASELINES.add(
            name,
            Baseline(name, fn, needs_set, tasks_set, higher_is_better, deterministic,
                     (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""),
        )
        return fn

    return decorator


def get_baseline(name: str) -> Baseline:
    return BASELINES.get(name)


def list_baselines(pattern: str = "*") -> list[str]:
    return BASELINES.list(pattern)
