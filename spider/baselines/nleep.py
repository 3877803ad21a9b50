"""N-LEEP (Li et al., CVPR 2021): LEEP with a Gaussian mixture in place of the source head.

The features are reduced by PCA to the fewest axes keeping 80 % of the variance; a full-covariance
Gaussian mixture fitted by EM (k-means++ / Lloyd initialisation) gives each sample a soft cluster
assignment, which plays the source-probability role in LEEP. The number of components follows
Model-Spider / pactran_metrics: max(min(C, ⌊0.2 N⌋), ⌊0.1 N⌋).

The mixture depends on its random initialisation, so the score depends on ``seed`` (fixed to 0 by
default, making repeated calls identical) and cannot reproduce a scikit-learn run to high
precision; the registry marks it ``deterministic=False``. Cost grows like N·K·k² per EM step with
K ≈ 0.1 N components, which is heavy for N in the tens of thousands.

Feature scale: N-LEEP is scale invariant. PCA by explained-variance fraction, k-means++ and the
k-means tolerance are scale free, and the mixture's covariance regulariser is 1e-6 times the mean
variance of the reduced features (scikit-learn's ``reg_covar`` is an absolute 1e-6: the same for
unit-variance features). The features are divided by a power of two near their magnitude first
(exact), so features such as 1e200 do not overflow. Constant features have nothing to cluster and
are rejected.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spider.baselines._inputs import as_float64, classification_labels, to_unit_scale
from spider.baselines.gbc import pca_project
from spider.baselines.leep import leep_from_probs
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["fit_gmm_posteriors", "kmeans_labels", "nleep"]

PCA_VARIANCE = 0.8
# Added to every covariance diagonal, relative to the mean variance of the reduced features
# (scikit-learn's default 1e-6, made scale free).
REG_COVAR = 1e-6
# Caps the [components, N, k] whitened-residual block evaluated at once.
_BLOCK_ELEMENTS = 1 << 24


def kmeans_labels(
    x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 300, tol: float = 1e-4
) -> torch.Tensor:
    """Lloyd's k-means from a k-means++ seeding. ``x`` [N, d] -> cluster ids [N] int64."""
    n = x.shape[0]
    centres = x.new_empty(k, x.shape[1])
    first = int(torch.randint(n, (1,), generator=generator, device="cpu"))
    centres[0] = x[first]
    closest = (x - centres[0]).square().sum(dim=1)
    for j in range(1, k):  # k-means++: sample proportional to squared distance (a loop over centres)
        weights = closest.clamp_min(0).cpu()
        pick = (
            int(torch.multinomial(weights, 1, generator=generator))
            if float(weights.sum()) > 0
            else int(torch.randint(n, (1,), generator=generator))
        )
        centres[j] = x[pick]
        closest = torch.minimum(closest, (x - centres[j]).square().sum(dim=1))
    scale = float(x.var(dim=0).mean()) * tol
    for _ in range(max_iter):
        assign = torch.cdist(x, centres).argmin(dim=1)
        sums = x.new_zeros(k, x.shape[1]).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty cluster: stay
        shift = float((new - centres).square().sum())
        centres = new
        if shift <= scale:
            break
    return torch.cdist(x, centres).argmin(dim=1)


def _m_step(
    x: torch.Tensor, resp: torch.Tensor, reg_covar: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixture weights [K], means [K, d] and precision Cholesky factors [K, d, d] from ``resp`` [N, K]."""
    nk = resp.sum(dim=0) + 10 * torch.finfo(x.dtype).eps
    means = resp.T @ x / nk[:, None]
    d = x.shape[1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    covs = torch.empty(resp.shape[1], d, d, dtype=x.dtype, device=x.device)
    for start, stop in _blocks(resp.shape[1], x.shape[0] * d):
        dev = x[None] - means[start:stop, None, :]  # [Kb, N, d]
        covs[start:stop] = (resp[:, start:stop].T[:, :, None] * dev).transpose(1, 2) @ dev
    covs = covs / nk[:, None, None] + reg_covar * eye
    chol, info = torch.linalg.cholesky_ex(covs)
    if bool((info > 0).any()):
        raise BaselineInputError("features: a mixture covariance is singular; nleep cannot be fitted")
    # Precision Cholesky P with P Pᵀ = Σ⁻¹, so |(x - μ) P|² is the Mahalanobis distance.
    prec_chol = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).transpose(1, 2)
    return nk / x.shape[0], means, prec_chol


def _blocks(total: int, per_item: int) -> list[tuple[int, int]]:
    size = max(1, _BLOCK_ELEMENTS // max(per_item, 1))
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def _log_joint(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, prec_chol: torch.Tensor) -> torch.Tensor:
    """log(w_k N(x_n | μ_k, Σ_k)) as [N, K]."""
    n, d = x.shape
    out = x.new_empty(n, means.shape[0])
    log_det = prec_chol.diagonal(dim1=1, dim2=2).log().sum(dim=1)  # log |P| = -½ log |Σ|
    for start, stop in _blocks(means.shape[0], n * d):
        white = x[None] @ prec_chol[start:stop] - (means[start:stop, None, :] @ prec_chol[start:stop])
        out[:, start:stop] = (-0.5 * white.square().sum(dim=2)).T
    return out - 0.5 * d * math.log(2 * math.pi) + log_det + weights.log()


def fit_gmm_posteriors(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = REG_COVAR,
) -> torch.Tensor:
    """Fit a full-covariance GMM with ``k`` components by EM; returns posteriors [N, k].

    ``reg_covar`` is relative: ``reg_covar`` times the mean variance of ``x`` joins every
    covariance diagonal, so the fit does not depend on the scale of ``x``.

    Raises:
        BaselineInputError: ``x`` has no variance (every row the same).
    """
    spread = float(x.var(dim=0, unbiased=False).mean())
    if not spread > 0:
        raise BaselineInputError("features: no variance (every row is the same); nleep has nothing to cluster")
    assign = kmeans_labels(x, k, generator)
    resp = torch.nn.functional.one_hot(assign, k).to(x.dtype)
    reg_covar = reg_covar * spread
    weights, means, prec_chol = _m_step(x, resp, reg_covar)
    previous = -math.inf
    for _ in range(max_iter):
        log_joint = _log_joint(x, weights, means, prec_chol)
        log_norm = torch.logsumexp(log_joint, dim=1, keepdim=True)
        resp = (log_joint - log_norm).exp()
        weights, means, prec_chol = _m_step(x, resp, reg_covar)
        bound = float(log_norm.mean())
        if abs(bound - previous) < tol:
            break
        previous = bound
    log_joint = _log_joint(x, weights, means, prec_chol)
    return (log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)).exp()


@register_baseline("nleep", deterministic=False, scale_invariant=True)
def nleep(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_components: int | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """N-LEEP (Li et al. 2021): LEEP on a PCA(80 %) + GMM soft clustering; seed-dependent.

    Args:
        features: [N, D] PTM features of the target data.
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: ignored.
        num_components: mixture size; default max(min(C, ⌊0.2 N⌋), ⌊0.1 N⌋).
        seed: seeds the k-means++ initialisation (same seed -> same score).
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        dtype, device: compute dtype (float64 default) and device.
    """
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    x = as_float64(features, "features", rows=y.shape[0], dtype=dtype, device=device)
    n = x.shape[0]
    k = num_components if num_components is not None else max(min(num_classes, n // 5), n // 10)
    if num_components is None and k < 1:
        raise BaselineInputError(
            f"features: N={n} samples give nleep's default of max(min(C, N // 5), N // 10) = 0 mixture "
            "components; it needs N >= 5 (or pass num_components)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise BaselineInputError(f"num_components: expected an int in [1, {n}], got {k!r}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    to_unit_scale(x)  # x is our own copy; N-LEEP is scale invariant
    reduced = pca_project(x, PCA_VARIANCE)
    posteriors = fit_gmm_posteriors(reduced, k, generator)
    return leep_from_probs(posteriors, y.to(x.device), num_classes)
