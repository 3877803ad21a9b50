"""GBC: Gaussian Bhattacharyya Coefficient (Pándy et al., CVPR 2022).

Each target class is modelled as a Gaussian in (PCA-reduced) feature space; GBC is minus the sum
over ordered class pairs of their Bhattacharyya coefficient exp(-D_B), so well separated classes
give a score near 0 and overlapping ones a negative score down to -C(C-1).

Canonical recipe (google-research config ``gbc.pca_reduction=64, gaussian_type='spherical'``):
exact PCA to 64 dimensions, then per class the mean and the per-dimension variance floored at
1e-4, averaged over dimensions for spherical Gaussians. As in that implementation, the spherical
log-determinant terms use the single averaged variance (not D times it).

Feature scale: the floor is absolute, so GBC is not scale invariant. It runs on features divided
by a power of two near their magnitude with the floor divided by its square, which is exactly the
published value at any magnitude (features of 1e200 no longer overflow the PCA). Features whose
mean variance is not above the floor (tiny or constant features: every class would get the floor
as its variance and the score would be about -C(C-1) whatever the classes) are rejected.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from spider.baselines._inputs import (
    TINY,
    as_float64,
    centre_columns,
    classification_labels,
    format_scaled,
    to_unit_scale,
    unscaled,
)
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["gbc", "gbc_from_features", "pca_project"]

VARIANCE_FLOOR = 1e-4  # keeps constant feature dimensions from giving log(0)


def pca_project(x: torch.Tensor, dim: int | float) -> torch.Tensor:
    """Exact PCA: centred ``x`` [N, D] projected on its top principal axes -> [N, k].

    Args:
        x: [N, D] floating features.
        dim: an int k (capped at min(N, D)), or a float in (0, 1): the fewest axes whose
            explained variance exceeds that fraction of the total (scikit-learn's convention).

    Uses the eigen-decomposition of the smaller Gram matrix (D x D, or N x N when N < D), which
    spans the same principal subspace as an SVD at a fraction of the cost.
    """
    xc = centre_columns(x.clone())
    n, d = xc.shape
    small_side = xc.T @ xc if n >= d else xc @ xc.T
    evals, vecs = torch.linalg.eigh(small_side)  # ascending
    evals, vecs = evals.flip(0).clamp_min(0), vecs.flip(1)  # descending, tiny negatives -> 0
    if isinstance(dim, float):
        ratio = torch.cumsum(evals, 0) / evals.sum()
        k = int(torch.searchsorted(ratio, torch.tensor([dim], dtype=ratio.dtype, device=ratio.device), right=True)) + 1
    else:
        k = dim
    k = max(1, min(k, n, d))
    if n >= d:
        return xc @ vecs[:, :k]
    return vecs[:, :k] * evals[:k].sqrt()  # U S: the scores without forming the D-side axes


def gbc_from_features(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    gaussian: Literal["spherical", "diagonal"] = "spherical",
    variance_floor: float = VARIANCE_FLOOR,
) -> float:
    """GBC of validated (already reduced) features.

    Args:
        x: [N, D] floating features.
        y: [N] int64 classes in ``[0, num_classes)``, every class present.
        num_classes: C.
        gaussian: ``"spherical"`` (one variance per class) or ``"diagonal"``.
        variance_floor: lower bound of every per-class, per-dimension variance (in the units of
            ``x``; the canonical 1e-4 divided by c^2 for features divided by c).

    Returns:
        -sum_{c != c'} exp(-D_B(c, c')), a float in [-C(C-1), 0].
    """
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)[:, None]  # [C, 1]
    means = x.new_zeros(num_classes, x.shape[1]).index_add_(0, y, x) / counts  # [C, D]
    # Per-class biased variance per dimension, from deviations (not E[x^2] - mean^2) for accuracy.
    dev2 = (x - means[y]).square()
    var = (x.new_zeros(num_classes, x.shape[1]).index_add_(0, y, dev2) / counts).clamp_min(variance_floor)
    if gaussian == "spherical":
        var = var.mean(dim=1, keepdim=True)  # [C, 1]
    log_var = var.log()
    avg = (var[:, None, :] + var[None, :, :]) / 2  # [C, C, D or 1]
    if gaussian == "spherical":
        # Exact pairwise distances without a [C, C, D] difference tensor (no Gram-trick cancellation).
        sq_dist = torch.cdist(means, means, compute_mode="donot_use_mm_for_euclid_dist").square()
        mean_term = sq_dist / avg[:, :, 0] / 8
    else:
        mean_term = ((means[:, None, :] - means[None, :, :]).square() / avg).sum(dim=2) / 8
    log_det = log_var.sum(dim=1)  # [C] (a single log-variance per class when spherical)
    logdet_term = 0.5 * (avg.log().sum(dim=2) - 0.5 * (log_det[:, None] + log_det[None, :]))
    coeff = torch.exp(-(mean_term + logdet_term))
    coeff.fill_diagonal_(0)
    return float(-coeff.sum())


@register_baseline("gbc")
def gbc(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    pca_dim: int | None = 64,
    gaussian: Literal["spherical", "diagonal"] = "spherical",
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """GBC (Pándy et al. 2022): exact PCA to 64 dims, spherical Gaussians; higher is better (<= 0).

    Args:
        features: [N, D] PTM features of the target data.
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: ignored.
        pca_dim: PCA dimension (capped at min(N, D)); None skips the PCA.
        gaussian: ``"spherical"`` (canonical) or ``"diagonal"`` class covariances.
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        dtype, device: compute dtype (float64 default) and device.
    """
    if gaussian not in ("spherical", "diagonal"):
        raise BaselineInputError(f"gaussian: expected 'spherical' or 'diagonal', got {gaussian!r}")
    if pca_dim is not None and (isinstance(pca_dim, bool) or not isinstance(pca_dim, int) or pca_dim < 1):
        raise BaselineInputError(f"pca_dim: expected a positive int or None, got {pca_dim!r}")
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    x = as_float64(features, "features", rows=y.shape[0], dtype=dtype, device=device)
    y = y.to(x.device)
    k = to_unit_scale(x)  # x is our own copy
    if pca_dim is not None:
        x = pca_project(x, pca_dim)
    # The floor in the units of x / 2**k; past float64's range it is negligible against every
    # non-zero variance, and TINY keeps log(floor) finite for classes with no spread.
    floor = max(unscaled(VARIANCE_FLOOR, -2 * k), TINY)
    spread = float(x.var(dim=0, unbiased=False).mean())
    if spread <= floor:
        raise BaselineInputError(
            f"features: mean variance {format_scaled(spread, 2 * k)} is not above gbc's absolute variance floor "
            f"{VARIANCE_FLOOR:g} (tiny or constant features: the floor, not the classes, would decide the "
            "score); rescale the features, e.g. to unit variance"
        )
    return gbc_from_features(x, y, num_classes, gaussian, floor)
