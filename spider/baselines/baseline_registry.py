"""Registry of transferability baselines (``@register_baseline`` in the style of timm).

A baseline is a callable ``fn(*, features, labels, source_logits=None, **options) -> float``
(higher = better). ``needs`` says which inputs it reads (``"features"``, ``"source_logits"``),
``tasks`` which label kinds it supports (``"classification"``, ``"regression"``).

Registration wraps the function so that its result is always a finite float: a NaN or infinite
score (which every consumer would otherwise have to guess the meaning of) raises
:class:`~spider.errors.BaselineInputError` naming the baseline instead. The module-level name
(e.g. ``spider.baselines.logme.logme``) is the wrapped function too, so no call path skips it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spider.errors import BaselineInputError
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
    # True when multiplying every feature by the same c > 0 leaves the score unchanged (baselines
    # that do not read features at all are trivially so); False for absolute constants inside.
    scale_invariant: bool = False
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
    scale_invariant: bool = False,
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register ``fn`` as baseline ``name``; returns ``fn`` wrapped by the finite-result check."""
    needs_set = frozenset((needs,) if isinstance(needs, str) else needs)
    tasks_set = frozenset((tasks,) if isinstance(tasks, str) else tasks)
    if not needs_set <= _VALID_NEEDS:
        raise ValueError(f"baseline {name!r}: needs must be within {sorted(_VALID_NEEDS)}")
    if not tasks_set <= _VALID_TASKS:
        raise ValueError(f"baseline {name!r}: tasks must be within {sorted(_VALID_TASKS)}")

    return register_checked(BASELINES, name, lambda checked, doc: Baseline(
        name, checked, needs_set, tasks_set, higher_is_better, deterministic, scale_invariant, doc))


def register_checked(registry: Registry[Any], name: str, entry: Callable[[Callable[..., float], str], Any]
                     ) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator adding ``entry(checked fn, first line of its docstring)`` to ``registry`` under
    ``name`` (a score's registry record); returns ``fn`` wrapped by the finite-result check."""

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        checked = _finite_result(name, fn)
        registry.add(name, entry(checked, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""))
        return checked

    return decorator


def _finite_result(name: str, fn: Callable[..., float]) -> Callable[..., float]:
    """``fn`` returning ``float(result)``, or raising BaselineInputError when that is not finite."""

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> float:
        value = float(fn(*args, **kwargs))
        if not math.isfinite(value):
            raise BaselineInputError(
                f"{name}: the score is {value} on these inputs (degenerate for this baseline); no value is reported"
            )
        return value

    return checked


def get_baseline(name: str) -> Baseline:
    return BASELINES.get(name)


def list_baselines(pattern: str = "*") -> list[str]:
    return BASELINES.list(pattern)
