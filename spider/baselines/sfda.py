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

Feature scale: λ is absolute, so SFDA is not scale invariant. It runs on features divided by a
power of two near their magnitude with λ measured back in the caller's units, which is exactly
the published value at any magnitude (the posteriors themselves are scale free). Two inputs are
rejected: no within-class variance at all (constant features, one sample per class, a few rows
repeated per class), where the discriminant is undefined, and a within-class spread λ <= 1e-4,
where the shrinkage has saturated at 1 and the score changes with the feature scale.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spider.baselines._inputs import as_float64, classification_labels, format_scaled, to_unit_scale, unscaled
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["sfda", "sfda_from_features"]

MIN_SHRINKAGE = 1e-10
POWER_STEPS = 3
# Top within-class eigenvalue at or below which exp(-5 λ) >= 0.9995: the shrinkage has saturated.
MIN_SPREAD = 1e-4


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
    value = float(x @ (a @ v))
    # Row sums orthogonal to every eigenvector (e.g. spread only along (1, -1)) make the
    # reference divide 0 by 0; the exact top eigenvalue is what it was estimating.
    return value if math.isfinite(value) else float(torch.linalg.eigvalsh(a)[-1])


def _shrink(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(1 - s) cov + s * (trace(cov) / D) * I."""
    out = (1.0 - shrinkage) * cov
    out.diagonal().add_(shrinkage * float(cov.diagonal().mean()))
    return out


def _adaptive_shrinkage(s_w: torch.Tensor, num_samples: int, scale_exponent: int) -> float:
    """The reference's max(exp(-5 λ), 1e-10), λ in the units of the features times 2**scale_exponent.

    Raises:
        BaselineInputError: no within-class variance, or λ <= MIN_SPREAD (saturated shrinkage).
    """
    # Every sample equal to its class mean still leaves deviations of rounding noise, at most
    # about N eps for features below 1 in magnitude: that is no spread, not a tiny one.
    noise = 2 * num_samples * torch.finfo(s_w.dtype).eps
    if float(s_w.diagonal().sum()) <= s_w.shape[0] * noise * noise:
        raise BaselineInputError(
            "features: no within-class variance (every sample equals its class mean: constant features, one "
            "sample per class or a few rows repeated per class); SFDA's Fisher discriminant is undefined"
        )
    lam_scaled = _power_top_eigenvalue(s_w)
    lam = unscaled(lam_scaled, 2 * scale_exponent)
    if lam <= MIN_SPREAD:
        raise BaselineInputError(
            f"features: within-class spread (top eigenvalue {format_scaled(lam_scaled, 2 * scale_exponent)}) is not "
            f"above {MIN_SPREAD:g}: sfda's absolute shrinkage rule exp(-5 lambda) saturates at 1 and the score "
            "would depend on the feature scale; rescale the features, e.g. to unit variance"
        )
    return max(math.exp(-5.0 * lam), MIN_SHRINKAGE)


def _fda_posterior(
    x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, shrinkage: float | None, scale_exponent: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Fit a shrunk-covariance Fisher discriminant on (x, y) and return its posteriors.

    Args:
        shrinkage: fixed shrinkage, or None for the adaptive rule on features x * 2**scale_exponent.

    Returns:
        ``(probs [N, C], means [C, D], shrinkage)``.
    """
    means = _class_means(x, y, counts)
    s_w = _within_class_covariance(x, y, means)
    if shrinkage is None:  # adaptive: little shrinkage when the within-class spread is large
        shrinkage = _adaptive_shrinkage(s_w, x.shape[0], scale_exponent)
    shrunk = _shrink(s_w, shrinkage)
    coef = torch.linalg.solve(shrunk, means.T).T  # [C, D] = means S_w⁻¹ (S_w symmetric)
    log_prior = (counts[:, 0] / x.shape[0]).log()
    intercept = -0.5 * (means * coef).sum(dim=1) + log_prior
    probs = torch.softmax(x @ coef.T + intercept, dim=1)
    return probs, means, shrinkage


def sfda_from_features(x: torch.Tensor, y: torch.Tensor, num_classes: int, scale_exponent: int = 0) -> float:
    """SFDA score of validated inputs.

    Args:
        x: [N, D] floating features (not modified).
        y: [N] int64 classes in ``[0, num_classes)``, every class present.
        num_classes: C >= 2.
        scale_exponent: the features are the caller's divided by 2**scale_exponent (for λ).

    Returns:
        Mean posterior of the true class after ConfMix, a float in (0, 1].
    """
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)[:, None]  # [C, 1]
    probs, means, shrinkage = _fda_posterior(x, y, counts, None, scale_exponent)
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
    k = to_unit_scale(x)  # x is our own copy
    return sfda_from_features(x, y.to(x.device), num_classes, k)
