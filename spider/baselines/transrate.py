"""TransRate (Huang et al., ICML 2022): coding rate of the features minus the mean per-class rate.

    R(Z, eps) = 1/2 log det(I_D + Z^T Z / (n eps))          for Z [n, D]
    TransRate = R(X_c, eps) - 1/C sum_c R(X_c[y == c], eps)

with X_c the features centred on the global mean (the class blocks are *not* re-centred) and
eps = 1e-4, as in the Transfer-Learning-Library (``tllib.ranking.transrate``), which this matches
to rounding error. The score is not scale invariant (eps is absolute), so it runs in float64.

Feature scale: R(cZ, c^2 eps) = R(Z, eps), so the features are divided by a power of two near
their magnitude and eps by its square (in log space, where it cannot underflow): exactly the
published value at any magnitude. Features whose mean variance is not above eps (tiny or constant
features, where eps rather than the features decides the score) are rejected.

Speed: every log-det comes from a Cholesky factor (the matrix is I + PSD, always positive
definite), and Sylvester's identity det(I_D + Z^T Z / a) = det(I_n + Z Z^T / a) turns a class with
n_c < D samples into an n_c x n_c problem. Classes of similar size are zero-padded to a common size
and factorised in one batch (a zero row adds an identity row: the log-det is unchanged). When
Z^T Z / (n eps) is so large that the Cholesky log-det would lose accuracy (features far above unit
scale), eigenvalues summed in log space take over.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spider.baselines._inputs import (
    as_float64,
    centre_columns,
    classification_labels,
    gram,
    resolve_dtype,
    format_scaled,
    to_unit_scale,
)
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["coding_rates", "transrate"]

# Classes whose sizes differ by at most this factor share one padded batch ...
_BUCKET_RATIO = 1.25
# ... of at most this many gathered feature entries (64 MiB in float32, 128 MiB in float64).
_BATCH_ELEMENTS = 1 << 24
# cond(I + a G) <= 1 + a tr(G); up to this bound the Cholesky log-det keeps ~8 digits or better.
_MAX_CONDITION = 1e8


def _half_logdet_identity_plus(grams: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """1/2 log det(I + grams * exp(log_scale)) for PSD ``grams`` [..., m, m] and ``log_scale`` [...].

    The scale is passed as a logarithm because for features far from unit scale it need not fit
    in float64 (1 / (n eps) with eps rescaled by 2**-1300, say).
    """
    trace = torch.diagonal(grams, dim1=-2, dim2=-1).sum(dim=-1)
    if bool((log_scale + trace.log() <= math.log(_MAX_CONDITION)).all()) and float(log_scale.max()) < 700:
        mat = grams * log_scale.exp()[..., None, None]
        mat.diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol, info = torch.linalg.cholesky_ex(mat)
        if not bool((info != 0).any()):  # cannot fail at this conditioning, but never trust a bad factor
            return torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(dim=-1)
    # 1/2 sum_i log(1 + g_i a) over the eigenvalues g_i of the Gram, each term as logaddexp(0,
    # log g_i + log a); eigenvalues at rounding level of the largest are zeros (they add log 1).
    eigvals = torch.linalg.eigvalsh(grams)
    tol = eigvals.amax(dim=-1, keepdim=True).clamp_min(0) * eigvals.shape[-1] * torch.finfo(grams.dtype).eps
    keep = eigvals > tol
    terms = torch.logaddexp(torch.zeros_like(eigvals), eigvals.clamp_min(tol).log() + log_scale[..., None])
    return 0.5 * torch.where(keep, terms, torch.zeros_like(terms)).sum(dim=-1)


def _rate(block: torch.Tensor, log_eps: float) -> torch.Tensor:
    """R(block, eps) for one block [n, D], on the smaller side of Sylvester's identity."""
    n, d = block.shape
    log_scale = torch.tensor(-math.log(n) - log_eps, dtype=block.dtype, device=block.device)
    return _half_logdet_identity_plus(gram(block, rows=n < d), log_scale)


def coding_rates(x: torch.Tensor, y: torch.Tensor, num_classes: int, eps: float = 1e-4) -> torch.Tensor:
    """Per-class coding rates R(x[y == c], eps) for every class, [C].

    Args:
        x: features [N, D] (already centred as the caller wants).
        y: int64 [N] class ids in [0, num_classes), every class present.
        num_classes: C.
        eps: distortion, in the units of x.
    """
    return _class_rates(x, y, num_classes, math.log(eps))


def _class_rates(x: torch.Tensor, y: torch.Tensor, num_classes: int, log_eps: float) -> torch.Tensor:
    """:func:`coding_rates` with the distortion given as log(eps)."""
    n, d = x.shape
    counts = torch.bincount(y, minlength=num_classes)
    order = torch.argsort(y, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rates = x.new_zeros(num_classes)
    sizes = counts.tolist()
    # Classes with n_c >= D: one D x D Gram each (together at most the cost of X^T X).
    small = []
    for c, size in enumerate(sizes):
        if size >= d:
            start = int(starts[c])
            rates[c] = _rate(x[order[start : start + size]], log_eps)
        else:
            small.append(c)
    if not small:
        return rates
    # Classes with n_c < D: bucket by size, zero-pad each bucket to its largest class, batch.
    # A zero row adds an identity row and column to I + Z Z^T / a: the log-det is unchanged.
    small.sort(key=lambda c: sizes[c])
    bucket: list[int] = []
    buckets = []
    for c in small:
        if bucket and sizes[c] > _BUCKET_RATIO * sizes[bucket[0]] + 8:
            buckets.append(bucket)
            bucket = []
        bucket.append(c)
    buckets.append(bucket)
    per_batch = max(1, _BATCH_ELEMENTS // (d * max(sizes[bucket[-1]] for bucket in buckets)))
    buckets = [b[i : i + per_batch] for b in buckets for i in range(0, len(b), per_batch)]
    for bucket in buckets:
        width = sizes[bucket[-1]]
        cls = torch.tensor(bucket, device=x.device)
        offsets = torch.arange(width, device=x.device)
        within = offsets[None, :] < counts[cls][:, None]  # [B, width]: True = real sample
        pos = (starts[cls][:, None] + offsets[None, :]).clamp_max(n - 1)
        blocks = x[order[pos]]  # [B, width, D]
        blocks.masked_fill_(~within[:, :, None], 0.0)  # padding rows become zero rows
        grams = blocks @ blocks.transpose(1, 2)  # [B, width, width]
        log_scale = -counts[cls].to(x.dtype).log() - log_eps
        rates[cls] = _half_logdet_identity_plus(grams, log_scale)
    return rates


@register_baseline("transrate")
def transrate(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    eps: float = 1e-4,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """TransRate R(f) - mean_c R(f | y = c) with distortion ``eps`` (higher = better).

    Args:
        features: [N, D] features of the target data (numpy or torch, any device).
        labels: int [N] class ids (remapped to 0..C-1 unless ``num_classes`` is given).
        source_logits: ignored (accepted so every baseline can be called alike).
        num_classes: take labels as ids in [0, num_classes) and reject empty classes.
        eps: distortion of the coding rate (absolute, so the score depends on feature scale).
        dtype: float64 (default; float32 loses the log-dets at this eps) or float32.
        device: where to compute (default: the features' device).
    """
    del source_logits
    if not eps > 0:
        raise BaselineInputError(f"eps: expected a positive distortion, got {eps!r}")
    x = as_float64(features, "features", dtype=resolve_dtype(dtype), device=device)
    y, c = classification_labels(labels, x.shape[0], num_classes=num_classes, device=x.device)
    k = to_unit_scale(x)  # x is our own copy
    centre_columns(x)
    log_eps = math.log(eps) - 2 * k * math.log(2.0)  # eps in the units of x / 2**k
    spread = float(x.square().mean())
    if spread == 0.0 or math.log(spread) <= log_eps:
        raise BaselineInputError(
            f"features: mean variance {format_scaled(spread, 2 * k)} is not above transrate's absolute distortion "
            f"eps={eps:g} (tiny or constant features: eps, not the features, would decide the score); rescale "
            "the features, e.g. to unit variance"
        )
    total = _rate(x, log_eps)
    return float(total - _class_rates(x, y, c, log_eps).mean())
