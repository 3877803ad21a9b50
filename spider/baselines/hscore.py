"""H-Score and its shrinkage-regularised variant.

H-Score (Bao et al., ICIP 2019) is tr(pinv(cov f) cov E[f|y]): how much of the feature variance the
class means explain, in units of the feature covariance; regularised H-Score (Ibrahim et al., 2022)
replaces cov f by the Ledoit-Wolf shrinkage estimate. Both match the Transfer-Learning-Library
(``tllib.ranking.hscore``) to rounding error, without ever forming the N x D matrix of class means:

    tr(pinv(cov f) cov g) = sum_c n_c (mu_c - mu)^T pinv(X_c^T X_c) (mu_c - mu),

with X_c the centred features. The inverse is applied through a Cholesky factor when the matrix is
safely invertible and through an eigendecomposition (pseudo-inverse semantics) otherwise.

With N <= D + 1 the centred features span every direction orthogonal to the all-ones vector, so
H-Score is exactly C - 1 for *any* features: every model ties. A warning says so.

Both scores are scale invariant (cov f and cov g scale alike; so does the Ledoit-Wolf target):
they run on features divided by a power of two near their magnitude, which is exact and keeps
features such as 1e200 from overflowing. Constant features have no covariance: both scores are 0.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from spider.baselines._inputs import (
    as_float64,
    centre_columns,
    classification_labels,
    gram,
    resolve_dtype,
    symmetric_eigh,
    to_unit_scale,
)
from spider.baselines.baseline_registry import register_baseline

__all__ = ["HScoreTieWarning", "hscore", "hscore_reg", "trace_pinv_quadratic"]

# tr(A) * tr(A^-1) bounds cond(A) from above; beyond this the Cholesky route could disagree with
# the pseudo-inverse, so the eigendecomposition takes over.
_MAX_CONDITION_BOUND = 1e10


class HScoreTieWarning(UserWarning):
    """H-Score cannot tell models apart on this task (N <= D + 1)."""


def trace_pinv_quadratic(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """tr(rows @ pinv(matrix) @ rows^T) for a symmetric positive semi-definite ``matrix``.

    Args:
        matrix: [D, D] symmetric PSD matrix.
        rows: [C, D].

    Returns:
        0-d tensor. Eigenvalues below max(D) * eps * largest are treated as 0 (pseudo-inverse).
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        inv_chol = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1
        # tr(A) * |L^-1|_F^2 = tr(A) tr(A^-1) >= cond(A): a cheap, rigorous conditioning check.
        bound = torch.diagonal(matrix).sum() * (inv_chol * inv_chol).sum()
        if bool(torch.isfinite(bound)) and float(bound) < _MAX_CONDITION_BOUND:
            z = inv_chol @ rows.T  # [D, C]
            return (z * z).sum()
    eigvals, vecs = symmetric_eigh(matrix)
    tol = eigvals.abs().max() * matrix.shape[0] * torch.finfo(matrix.dtype).eps
    keep = eigvals > tol
    z = rows @ vecs[:, keep]  # [C, k]
    return (z * z / eigvals[keep]).sum()


def _centred_class_stats(
    features: Any, labels: Any, num_classes: int | None, dtype: Any, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Centred features [N, D], labels [N], rows sqrt(n_c) (mu_c - mu) [C, D], and C."""
    x = as_float64(features, "features", dtype=resolve_dtype(dtype), device=device)
    y, c = classification_labels(labels, x.shape[0], num_classes=num_classes, device=x.device)
    to_unit_scale(x)  # x is our own copy; both scores are scale invariant
    centre_columns(x)
    counts = torch.bincount(y, minlength=c).to(x.dtype)
    class_sums = x.new_zeros(c, x.shape[1]).index_add_(0, y, x)  # n_c (mu_c - mu)
    return x, y, class_sums / counts.sqrt()[:, None], c


@register_baseline("hscore", scale_invariant=True)
def hscore(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """H-Score tr(pinv(cov f) cov E[f|y]) (higher = better; at most C - 1).

    Args:
        features: [N, D] features of the target data (numpy or torch, any device).
        labels: int [N] class ids (remapped to 0..C-1 unless ``num_classes`` is given).
        source_logits: ignored (accepted so every baseline can be called alike).
        num_classes: take labels as ids in [0, num_classes) and reject empty classes.
        dtype: float64 (default) or float32.
        device: where to compute (default: the features' device).

    Warns:
        HScoreTieWarning: when N <= D + 1, where the score is C - 1 whatever the features.
    """
    del source_logits
    x, y, rows, c = _centred_class_stats(features, labels, num_classes, dtype, device)
    n, d = x.shape
    if n - 1 <= d:
        warnings.warn(
            f"hscore: N={n} samples <= D+1={d + 1}: H-Score equals C-1={c - 1} for any features, "
            "so every model ties on this task",
            HScoreTieWarning,
            stacklevel=2,
        )
    if n <= d:
        # pinv(X^T X) sandwiched by X is the projector onto the column space of X: work with
        # the N x N Gram; score = sum_c |U_k^T 1_c|^2 / n_c over its non-null eigenvectors U_k.
        eigvals, vecs = symmetric_eigh(gram(x, rows=True))
        tol = eigvals.abs().max() * max(n, d) * torch.finfo(x.dtype).eps
        basis = vecs[:, eigvals > tol]  # [N, k]
        counts = torch.bincount(y, minlength=c).to(x.dtype)
        sums = x.new_zeros(c, basis.shape[1]).index_add_(0, y, basis)  # [C, k]
        return float(((sums * sums).sum(dim=1) / counts).sum())
    return float(trace_pinv_quadratic(gram(x), rows))


def _ledoit_wolf_shrinkage(x: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf shrinkage of centred ``x`` [N, D] given ``scatter = x^T x``, as scikit-learn does."""
    n, d = x.shape
    mu = torch.diagonal(scatter).sum() / (n * d)  # mean eigenvalue of the empirical covariance
    delta_sum = (scatter * scatter).sum() / n**2  # |emp_cov|_F^2
    row_sq = (x * x).sum(dim=1)
    beta_sum = (row_sq * row_sq).sum()  # sum of the entries of (x^2)^T (x^2)
    beta = (beta_sum / n - delta_sum) / (d * n)
    delta = (delta_sum - d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    return torch.where(beta == 0, torch.zeros_like(beta), beta / delta)


@register_baseline("hscore_reg", scale_invariant=True)
def hscore_reg(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Regularised H-Score: Ledoit-Wolf shrunk covariance in place of cov f (higher = better).

    Same arguments as :func:`hscore`. The shrinkage keeps the score informative when N <= D.
    """
    del source_logits
    x, _, rows, _ = _centred_class_stats(features, labels, num_classes, dtype, device)
    n, d = x.shape
    scatter = gram(x)  # [D, D]
    shrinkage = _ledoit_wolf_shrinkage(x, scatter)
    mu = torch.diagonal(scatter).sum() / (n * d)
    shrunk = scatter * ((1.0 - shrinkage) / n)
    shrunk.diagonal().add_(shrinkage * mu)
    # cov g uses the unbiased 1/(N-1) normalisation, as numpy.cov does.
    score = (1.0 - shrinkage) / (n - 1) * trace_pinv_quadratic(shrunk, rows)
    return float(score)
