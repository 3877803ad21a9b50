"""SFDA: Self-challenging Fisher Discriminant Analysis (Shao et al., ECCV 2022).

Two regularised Fisher discriminants are fitted on the features. The first one's (re-softened)
posterior of each sample's own class mixes the sample towards the mean of the *other* classes'
means ("ConfMix", a hard-example challenge); the score is the second discriminant's average
posterior of the true class on the mixed features.

The discriminant's posterior only depends on the shrunk within-class covariance S_w: the
reference's generalised eigenvectors V of (S_b, S_w) satisfy V Vᵀ = S_w⁻¹, so its
``coef = means V Vᵀ`` equals ``means S_w⁻¹``, which we obtain from one linear solve.
The shrinkage ``max(exp(-5 λ), 1e-10)`` uses the reference's λ estimate (three double power
iterations started from the row sums of S_w) so the values agree, not the exact top eigenvalue.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spider.baselines._inputs import as_float64, classification_labels
from spider.baselines.baseline_registry import register_baseline

__all__ = ["sfda", "sfda_from_features"]

MIN_SHRINKAGE = 1e-10
POWER_STEPS = 3


def _class_means(x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[C, D] mean feature of each class; ``counts`` [C, 1] samples per class."""
    return x.new_zeros(counts.shape[0], x.shape[1]).index_add_(0, y, x) / counts


def _within_class_covariance(x: torch.Tensor, y: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """[D, D] prior-weighted sum of biased class covariances = (1/N) sum_i (x_i - m_yi)(x_i - m_yi)ᵀ."""
    dev = x - means[y]
    return dev.T @ dev / x.shape[0]


def _power_top_eigenvalue(a: torch.Tensor, steps: int = POWER_STEPS) -> float:
    """Top-eigenvalue estimate of symmetric ``a`` exactly as the reference computes it."""
    x = a.sum(dim=1)
    for _ in range(steps):
        t = a @ x
        v = t / torch.linalg.vector_norm(t)
        t = a @ v
        x = t / torch.linalg.vector_norm(t)
    return float(x @ (a @ v))


def _shrink(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(1 - s) cov + s * (trace(cov) / D) * I."""
    out = (1.0 - shrinkage) * cov
    out.diagonal().add_(shrinkage * float(cov.diagonal().mean()))
    return out


def _fda_posterior(
    x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, shrinkage: float | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Fit a shrunk-covariance Fisher discriminant on (x, y) and return its posteriors.

    Returns:
        ``(probs [N, C], means [C, D], shrinkage)``.
    """
    means = _class_means(x, y, counts)
    s_w = _within_class_covariance(x, y, means)
    if shrinkage is None:  # adaptive: little shrinkage when the within-class spread is large
        shrinkage = max(math.exp(-5.0 * _power_top_eigenvalue(s_w)), MIN_SHRINKAGE)
    shrunk = _shrink(s_w, shrinkage)
    coef = torch.linalg.solve(shrunk, means.T).T  # [C, D] = means S_w⁻¹ (S_w symmetric)
    log_prior = (counts[:, 0] / x.shape[0]).log()
    intercept = -0.5 * (means * coef).sum(dim=1) + log_prior
    probs = torch.softmax(x @ coef.T + intercept, dim=1)
    return probs, means, shrinkage


def sfda_from_features(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """SFDA score of validated inputs.

    Args:
        x: [N, D] floating features (not modified).
        y: [N] int64 classes in ``[0, num_classes)``, every class present.
        num_classes: C >= 2.

    Returns:
        Mean posterior of the true class after ConfMix, a float in (0, 1].
    """
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)[:, None]  # [C, 1]
    probs, means, shrinkage = _fda_posterior(x, y, counts, None)
    # The reference softens the posterior once more before using it as a mixing weight.
    p_own = torch.softmax(probs, dim=1).gather(1, y[:, None])  # [N, 1]
    other_means = (means.sum(dim=0) - means) / (num_classes - 1)  # [C, D] mean of the other classes
    mixed = p_own * x + (1.0 - p_own) * other_means[y]
    probs, _, _ = _fda_posterior(mixed, y, counts, shrinkage)
    return float(probs.gather(1, y[:, None]).mean())


@register_baseline("sfda")
def sfda(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """SFDA (Shao et al. 2022): self-challenging Fisher discriminant; higher is better, in (0, 1].

    Args:
        features: [N, D] PTM features of the target data (never modified).
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: ignored.
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        dtype, device: compute dtype (float64 default) and device.
    """
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    x = as_float64(features, "features", rows=y.shape[0], dtype=dtype, device=device)
    return sfda_from_features(x, y.to(x.device), num_classes)
