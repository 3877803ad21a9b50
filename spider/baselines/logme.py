"""LogME: the maximum log marginal evidence of a Bayesian linear model on the features.

For one target column t [N] (a class indicator, or a regression target) and features X [N, D], the
model t = X w + noise with prior w ~ N(0, I/alpha) and noise ~ N(0, 1/beta) has the log evidence

    L(alpha, beta) = D/2 log alpha + N/2 log beta - 1/2 sum_{i=1..D} log(alpha + beta s_i)
                     - beta/2 |t - X m|^2 - alpha/2 |m|^2 - N/2 log(2 pi),

where s_i are the D eigenvalues of X^T X and m the posterior mean. LogME is max L / N averaged over
the target columns (You et al., ICML 2021; JMLR 2022).

Two baselines are registered:

* ``logme`` -- the true maximum. With lam = alpha / beta the maximum over beta is closed-form, so the
  evidence becomes a function of log lam alone (the "profile" below); it is searched on a grid that
  spans the spectrum and polished by safeguarded Newton steps, then compared with its limits. All D
  eigenvalues enter the log-det (zero ones included), which handles N < D and rank-deficient
  features; a target the features cannot predict has its supremum at alpha -> infinity, with value
  -1/2 [log(2 pi |t|^2 / N) + 1] per sample.
* ``logme_official`` -- the official implementation's numbers (thuml/LogME ``_fit_fixed_point``):
  at most 11 fixed-point steps from alpha = beta = 1, stopping when lam moves by <= 0.1 %, a 1e-5
  guard in the updates, and only min(N, D) eigenvalues in the log-det. Use it to compare with
  published tables, not to rank models.

Both share one eigendecomposition: of X^T X when N > D, of X X^T otherwise, and run every target
column at once (no loop over classes). Classification labels are int [N]; float labels [N] or
[N, K] switch to regression (one evidence per target column, averaged).

Feature scale: ``logme`` is scale invariant (X -> cX maps the maximiser lam -> c^2 lam and leaves
the maximum unchanged), so it runs on features divided by a power of two near their magnitude
(exact) and gives the same value for features of any magnitude. ``logme_official`` is not: its
start alpha = beta = 1, its 1e-5 guard and its 11-step cap are absolute. It runs in the same
rescaled frame with those constants rescaled to match (alpha -> alpha / c^2, the guard on |m|^2 ->
c^2 guard, plus (D - min(N, D)) log c for the log-det terms it drops), which is exactly the
official value, and rejects features beyond about 1e+-150 where the rescaled constants leave
float64. Features that reproduce a target exactly with fewer independent rows than samples (e.g.
a few distinct rows repeated, one per class) have unbounded evidence: ``logme`` rejects them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from spider.baselines._inputs import (
    as_float64,
    classification_labels,
    gram,
    is_regression_labels,
    regression_targets,
    resolve_dtype,
    symmetric_eigh,
    TINY,
    to_unit_scale,
    unscaled,
)
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["Spectrum", "logme", "logme_official", "logme_spectrum", "profile_evidence"]

_LOG_2PI = math.log(2.0 * math.pi)
# A residual within this many max(N, D) * eps of |t|^2 is rounding noise of an exact fit.
_EXACT_FIT_TOL = 1024
OFFICIAL_GUARD = 1e-5  # thuml/LogME's guard in the alpha and beta updates


@dataclass(frozen=True)
class Spectrum:
    """What LogME needs of (X, targets), shared by every target column.

    Attributes:
        eigvals: [r] eigenvalues s_i of X^T X (r = min(N, D)), clipped to 0 below the numerical
            rank tolerance; the other D - r eigenvalues are exactly 0.
        proj2: [r, T] squared coordinates x_i^2 of each target on the left singular vector of s_i
            (0 where s_i is 0).
        resid: [T] squared norm of the part of each target outside those singular vectors
            (|t|^2 - sum_i x_i^2 over non-zero s_i), >= 0.
        sq_norm: [T] |t|^2 of each target column.
        num_samples: N.
        dim: D.
    """

    eigvals: torch.Tensor
    proj2: torch.Tensor
    resid: torch.Tensor
    sq_norm: torch.Tensor
    num_samples: int
    dim: int


def logme_spectrum(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int | None = None,
) -> Spectrum:
    """Eigendecompose the feature Gram once and project every target column on it.

    Args:
        features: float tensor [N, D] (already validated; it is left unchanged).
        labels: int64 [N] class ids in [0, num_classes) (classification; targets are the class
            indicators) or float [N, T] regression targets.
        num_classes: number of classes C for int labels (T = C).

    Returns:
        :class:`Spectrum` with T target columns.
    """
    n, d = features.shape
    classification = not labels.is_floating_point()
    if n > d:
        eigvals, vecs = symmetric_eigh(gram(features))  # vecs [D, D]: right singular vectors of X
        if classification:
            class_sums = features.new_zeros(num_classes, d).index_add_(0, labels, features)  # [C, D]
            coords = vecs.T @ class_sums.T  # [D, C]: v_i^T X^T t = sigma_i * (u_i^T t)
        else:
            coords = vecs.T @ (features.T @ labels)  # [D, T]
    else:
        eigvals, vecs = symmetric_eigh(gram(features, rows=True))  # vecs [N, N]: left singular vectors
        if classification:
            coords = features.new_zeros(num_classes, n).index_add_(0, labels, vecs).T  # [N, C] = U^T t
        else:
            coords = vecs.T @ labels  # [N, T]
    # Eigenvalues below the usual numerical-rank tolerance are rounding noise around 0 (their
    # sign is arbitrary): treat them as exactly 0 and their directions as unexplained residual.
    tol = eigvals.abs().max() * max(n, d) * torch.finfo(eigvals.dtype).eps
    positive = eigvals > tol
    eigvals = torch.where(positive, eigvals, torch.zeros_like(eigvals))
    if classification:
        sq_norm = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    else:
        sq_norm = (labels * labels).sum(dim=0)
    if n > d:
        safe = torch.where(positive, eigvals, torch.ones_like(eigvals))
        proj2 = torch.where(positive[:, None], coords * coords / safe[:, None], torch.zeros_like(coords))
        resid = (sq_norm - proj2.sum(dim=0)).clamp_min(0.0)
    else:
        # The N x N eigenbasis is complete: the residual is a sum of squares, exact (0 when
        # the features interpolate the target), not a difference.
        sq = coords * coords
        proj2 = torch.where(positive[:, None], sq, torch.zeros_like(sq))
        resid = (sq - proj2).sum(dim=0)
    return Spectrum(eigvals, proj2, resid, sq_norm, n, d)


def _profile_slopes(spec: Spectrum, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivative of the profile evidence in u = log lam, one u per target.

    Args:
        u: [T] log(alpha / beta) for each target column.

    Returns:
        ``(d value/du, d^2 value/du^2)``, each [T].
    """
    s = spec.eigvals[None, :]  # [1, r]
    lam = u.exp()[:, None]  # [T, 1]
    a = lam / (lam + s)  # share of direction i left to the noise, [T, r]
    b = 1.0 - a
    x2 = spec.proj2.T  # [T, r]
    n = spec.num_samples
    ab = a * b
    energy = (x2 * a).sum(dim=1) + spec.resid  # E(lam) = t^T (I + X X^T / lam)^-1 t
    q = (x2 * ab).sum(dim=1)  # dE/du
    dq = (x2 * ab * (b - a)).sum(dim=1)  # d^2E/du^2
    grad = 0.5 * b.sum(dim=1) - 0.5 * n * q / energy  # gamma/2 - N/2 dlogE/du
    hess = -0.5 * ab.sum(dim=1) - 0.5 * n * (dq * energy - q * q) / (energy * energy)
    return grad, hess


def profile_evidence(spec: Spectrum, lam: torch.Tensor) -> torch.Tensor:
    """Log evidence maximised over beta at fixed lam = alpha / beta (total, not per sample).

    With every eigenvalue of X^T X in the log-det, max_beta L = -1/2 sum_i log(1 + s_i / lam)
    - N/2 [log(E(lam) / N) + 1 + log 2 pi], E(lam) = sum_i x_i^2 lam / (lam + s_i) + resid.

    Args:
        lam: [T] or [G, 1] broadcastable against the T target columns.

    Returns:
        Evidence values broadcast to lam's batch shape and T.
    """
    s = spec.eigvals
    n = spec.num_samples
    lam = lam.reshape(-1, 1)  # [G, 1]
    weights = lam / (lam + s)  # [G, r]
    energy = weights @ spec.proj2 + spec.resid  # [G, T]
    logdet = torch.log1p(s / lam).sum(dim=1, keepdim=True)  # [G, 1]
    return -0.5 * logdet - 0.5 * n * (torch.log(energy / n) + 1.0 + _LOG_2PI)


def _profile_at(spec: Spectrum, u: torch.Tensor) -> torch.Tensor:
    """Profile evidence of target t at its own u[t] = log lam, [T]."""
    s = spec.eigvals[None, :]
    lam = u.exp()[:, None]
    energy = (spec.proj2.T * (lam / (lam + s))).sum(dim=1) + spec.resid
    logdet = torch.log1p(s / lam).sum(dim=1)
    return -0.5 * logdet - 0.5 * spec.num_samples * (torch.log(energy / spec.num_samples) + 1.0 + _LOG_2PI)


def _maximise_profile(spec: Spectrum, grid_step: float = 0.25, max_newton: int = 100) -> torch.Tensor:
    """Supremum over lam in (0, inf] of the profile evidence for every target column, [T] total."""
    s = spec.eigvals
    n = spec.num_samples
    dtype, device = s.dtype, s.device
    nonzero = s[s > 0]
    # At alpha -> infinity the weights are pinned at 0 and only the noise level is fitted.
    at_infinity = -0.5 * n * (torch.log(spec.sq_norm / n) + 1.0 + _LOG_2PI)
    if nonzero.numel() == 0:
        return at_infinity
    # Every interesting change of the profile happens while lam sweeps past the eigenvalues; far
    # outside it is monotone, and the Newton brackets below extend 40 e-folds further anyway.
    lo = math.log(float(nonzero.min())) - 8.0
    hi = math.log(float(nonzero.max())) + 8.0
    num_grid = max(8, min(512, int(math.ceil((hi - lo) / grid_step)) + 1))
    grid = torch.linspace(lo, hi, num_grid, dtype=dtype, device=device)  # [G] log lam
    values = profile_evidence(spec, grid.exp())  # [G, T]
    best_value, best = values.max(dim=0)  # [T]
    u = grid[best]
    g, _ = _profile_slopes(spec, u)
    # Bracket a sign change of the slope (+ then -) between the best grid point's neighbours.
    left = torch.where(best > 0, grid[(best - 1).clamp_min(0)], grid[0] - 40.0)
    right = torch.where(best < num_grid - 1, grid[(best + 1).clamp_max(num_grid - 1)], grid[-1] + 40.0)
    left = torch.where(g > 0, u, left)
    right = torch.where(g > 0, right, u)
    # Best at the top of the grid and still rising: past every eigenvalue the profile climbs
    # monotonically to its alpha -> infinity limit, so there is nothing left to refine.
    rising_to_inf = (best == num_grid - 1) & (g > 0)
    left = torch.where(rising_to_inf, u, left)
    right = torch.where(rising_to_inf, u, right)
    for _ in range(max_newton):
        g, h = _profile_slopes(spec, u)
        left = torch.where(g > 0, u, left)
        right = torch.where(g > 0, right, u)
        newton = u - g / h
        inside = (h < 0) & (newton >= left) & (newton <= right)
        u_next = torch.where(inside, newton, 0.5 * (left + right))
        # The value is flat at the maximum: 1e-10 in log lam is far below 1e-6 in the evidence.
        done = (u_next - u).abs() <= 1e-10 * (1.0 + u.abs())
        u = u_next
        if bool(done.all()):
            break
    value = _profile_at(spec, u)
    value = torch.maximum(torch.maximum(value, best_value), at_infinity)
    # lam -> 0: finite only when the features reproduce the target exactly (resid == 0), where
    # N - rank of the noise-free samples decides between a finite limit and +infinity. An exact
    # fit leaves a residual of rounding noise (sq_norm - sum proj2 can come out as +1e-17), which
    # must not pass for a tiny true residual with an enormous finite evidence.
    exact = spec.resid <= _EXACT_FIT_TOL * max(n, spec.dim) * torch.finfo(s.dtype).eps * spec.sq_norm
    if bool(exact.any()):
        rank = int(nonzero.numel())
        if rank < n:
            limit = torch.full_like(value, math.inf)
        else:
            inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
            limit = (
                -0.5 * torch.log(nonzero).sum()
                - 0.5 * n * (torch.log((spec.proj2.T * inv).sum(dim=1) / n) + 1.0 + _LOG_2PI)
            )
        value = torch.where(exact, torch.maximum(value, limit), value)
    return value


def _official_fixed_point(spec: Spectrum, scale_exponent: int = 0, max_steps: int = 11) -> torch.Tensor:
    """The official ``_fit_fixed_point`` run for every target column at once; [T] total evidence.

    Args:
        spec: spectrum of the features divided by c = 2**scale_exponent.
        scale_exponent: log2 of that factor; the official constants are rescaled with it so that
            the result is the official value for the original features.
    """
    s = spec.eigvals[:, None]  # [r, 1]: the official code keeps all min(N, D) values
    x2 = spec.proj2  # [r, T]
    resid = spec.resid
    n, d = spec.num_samples, spec.dim
    num_targets = x2.shape[1]
    # X / c has weights c w: their prior precision alpha and their squared norm's guard scale by
    # 1 / c^2 and c^2; beta (noise precision of the targets) and the residual guard do not.
    alpha0 = unscaled(1.0, -2 * scale_exponent)
    guard_m = unscaled(OFFICIAL_GUARD, 2 * scale_exponent)
    if not (TINY <= alpha0 < math.inf and TINY <= guard_m < math.inf):
        raise BaselineInputError(
            f"features: largest |x| about 1e{round(scale_exponent * math.log10(2.0))} is outside the range where the "
            "official LogME's absolute constants (start alpha=beta=1, guard 1e-5) fit in float64; use 'logme' "
            "(scale-invariant)"
        )
    ones = torch.ones(num_targets, dtype=s.dtype, device=s.device)
    alpha, beta = ones * alpha0, ones.clone()
    evidence = torch.zeros_like(ones)
    active = torch.ones(num_targets, dtype=torch.bool, device=s.device)
    for _ in range(max_steps):
        lam = alpha / beta
        gamma = (s / (s + lam)).sum(dim=0)
        m2 = (s * x2 / (lam + s) ** 2).sum(dim=0)
        res2 = (x2 / (1.0 + s / lam) ** 2).sum(dim=0) + resid
        new_alpha = gamma / (m2 + guard_m)
        new_beta = (n - gamma) / (res2 + OFFICIAL_GUARD)
        value = (
            0.5 * d * torch.log(new_alpha)
            + 0.5 * n * torch.log(new_beta)
            - 0.5 * torch.log(new_alpha + new_beta * s).sum(dim=0)
            - 0.5 * new_beta * res2
            - 0.5 * new_alpha * m2
            - 0.5 * n * _LOG_2PI
        )
        # A column that stopped keeps the values of its last step, as in the per-class loop.
        evidence = torch.where(active, value, evidence)
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        active = active & ((new_alpha / new_beta - lam).abs() / lam > 1e-3)
        if not bool(active.any()):
            break
    # Back to the original features: D/2 log alpha loses D log c and each of the min(N, D) log-det
    # terms gains log c, so the D - min(N, D) terms the official code drops leave this behind.
    return evidence + (d - s.shape[0]) * scale_exponent * math.log(2.0)


def _prepare(
    features: Any,
    labels: Any,
    num_classes: int | None,
    dtype: torch.dtype | str | None,
    device: torch.device | str | None,
) -> tuple[Spectrum, int, bool]:
    """Spectrum of the features divided by 2**k, that k, and whether the labels are classes."""
    dtype = resolve_dtype(dtype)
    x = as_float64(features, "features", dtype=dtype, device=device)
    n = x.shape[0]
    if is_regression_labels(labels):
        targets = regression_targets(labels, n, dtype=dtype, device=x.device)
        zero = (targets == 0).all(dim=0)
        if bool(zero.any()):
            col = int(torch.nonzero(zero)[0])
            raise BaselineInputError(f"labels: regression target column {col} is all zeros (evidence unbounded)")
        k = to_unit_scale(x)
        return logme_spectrum(x, targets), k, False
    y, c = classification_labels(labels, n, num_classes=num_classes, device=x.device)
    k = to_unit_scale(x)
    return logme_spectrum(x, y, c), k, True


@register_baseline("logme", tasks=("classification", "regression"), scale_invariant=True)
def logme(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """LogME at the true maximum of the evidence (higher = better).

    Args:
        features: [N, D] features of the target data (numpy or torch, any device).
        labels: int [N] class ids (classification) or float [N] / [N, K] targets (regression).
        source_logits: ignored (accepted so every baseline can be called alike).
        num_classes: take int labels as ids in [0, num_classes) and reject empty classes
            (default: remap the distinct labels to 0..C-1).
        dtype: float64 (default) or float32 (faster on GPU, less exact).
        device: where to compute (default: the features' device).

    Returns:
        Mean over classes (or target columns) of the maximal log evidence per sample.
    """
    del source_logits
    spec, _, classification = _prepare(features, labels, num_classes, dtype, device)
    evidence = _maximise_profile(spec)
    unbounded = torch.isinf(evidence)
    if bool(unbounded.any()):
        what = "class indicators" if classification else "regression target columns"
        rank = int((spec.eigvals > 0).sum())
        raise BaselineInputError(
            f"features: reproduce {int(unbounded.sum())} of {unbounded.numel()} {what} exactly with rank {rank} "
            f"< N={spec.num_samples} samples (e.g. a few distinct rows repeated); LogME's evidence is unbounded"
        )
    return float((evidence / spec.num_samples).mean())


@register_baseline("logme_official", tasks=("classification", "regression"))
def logme_official(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """LogME as the official implementation computes it (11-step cap; min(N, D) log-det terms).

    Same arguments as :func:`logme`. Matches thuml/LogME ``LogME.fit`` to rounding error for
    contiguous labels. Below the true maximum when the cap is hit, and far above it for N < D.
    """
    del source_logits
    spec, k, _ = _prepare(features, labels, num_classes, dtype, device)
    return float((_official_fixed_point(spec, k) / spec.num_samples).mean())
