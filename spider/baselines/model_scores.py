"""Registry of transferability scores that need the model itself (``@register_model_score``).

The baselines of :mod:`spider.baselines.baseline_registry` read only stored features and logits.
A *model score* needs the network: it runs it (e.g. per-sample gradients for LGC) on the
target's preprocessed images. Its callable is::

    fn(*, module, images, labels, forward=None, device=None, **options) -> float   # higher = better

``module`` is the ``nn.Module`` whose parameters are differentiated, ``forward(x)`` maps a batch of
preprocessed images ``[B, ...]`` to penultimate features ``[B, D]`` through ``module``'s
parameters (default: ``module(x)``), ``images`` the whole target ``[N, ...]`` and ``labels`` its
``[N]`` class ids. The result is always a finite float (a NaN or inf raises
:class:`~spider.errors.BaselineInputError`, as for the feature baselines).

The glue that loads a zoo PTM and preprocesses images for it is :func:`spider.model_score.score_prepared`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spider.baselines.baseline_registry import register_checked
from spider.registry import Registry

__all__ = ["MODEL_SCORES", "ModelScore", "get_model_score", "list_model_scores", "register_model_score"]


@dataclass(frozen=True)
class ModelScore:
    """A registered score that needs the model (not only its features)."""

    name: str
    fn: Callable[..., float]
    higher_is_better: bool = True
    doc: str = field(default="", compare=False)

    def __call__(self, **inputs: Any) -> float:
        return self.fn(**inputs)


MODEL_SCORES: Registry[ModelScore] = Registry("model score")


def register_model_score(name: str, *, higher_is_better: bool = True) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register ``fn`` as model score ``name``; returns ``fn`` wrapped by the finite-result check."""
    return register_checked(MODEL_SCORES, name, lambda checked, doc: ModelScore(name, checked, higher_is_better, doc))


def get_model_score(name: str) -> ModelScore:
    return MODEL_SCORES.get(name)


def list_model_scores(pattern: str = "*") -> list[str]:
    return MODEL_SCORES.list(pattern)
