"""Input handling shared by every transferability baseline.

Every baseline converts its arguments through these helpers so that all of them accept the same
things (numpy arrays, torch tensors on CPU or CUDA, nested lists), reject the same bad inputs with
the same one-line :class:`~spider.errors.BaselineInputError`, and never touch the caller's memory.

Conventions:

* Numbers are computed in ``float64`` on the input's device by default (numpy input: CPU). A
  baseline may offer ``dtype=torch.float32`` for speed on a GPU; :func:`resolve_dtype` checks it.
* Tensors returned here never share memory with the caller's array, so a baseline may modify them
  in place.
* Class labels are remapped to ``0..C-1`` in sorted order of their values (``[3, 7, 3, 9]`` becomes
  ``[0, 1, 0, 2]``). When the caller states ``num_classes`` the labels are taken as ids in
  ``[0, num_classes)`` instead, and a class without samples is an error.
* Feature scale: every feature-reading baseline first divides its copy of the features by the power
  of two that brings max |x| into [0.5, 1) (:func:`to_unit_scale`). Multiplying by a power of two is
  exact in floating point, so this changes no value; it only keeps Gram matrices and squared
  distances of features such as 1e200 or 1e-200 from overflowing or underflowing. Baselines whose
  definition holds an absolute constant (GBC's variance floor, TransRate's distortion, SFDA's
  shrinkage rule, the official LogME's start and guard) rescale that constant with the features,
  so they compute exactly their published value, and reject with :class:`BaselineInputError`
  features too small for the constant (the constant, not the features, would decide the score).
  The registry's ``scale_invariant`` flag says which scores do not depend on the feature scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from spider.errors import BaselineInputError

__all__ = [
    "DEFAULT_DTYPE",
    "TINY",
    "as_float64",
    "as_probabilities",
    "centre_columns",
    "checked_device",
    "classification_labels",
    "gram",
    "is_regression_labels",
    "regression_targets",
    "resolve_device",
    "resolve_dtype",
    "softmax_probs",
    "symmetric_eigh",
    "format_scaled",
    "to_unit_scale",
    "unscaled",
]

DEFAULT_DTYPE = torch.float64
_ALLOWED_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_DEVICE_TYPES = ("cpu", "cuda", "mps")
# Smallest value a rescaled constant may take (float64 subnormals start at 2**-1022).
TINY = 2.0**-1000


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` -> float64; accepts ``torch.float32/float64`` or their names."""
    if dtype is None:
        return DEFAULT_DTYPE
    if isinstance(dtype, str):
        key = dtype.removeprefix("torch.")
        if key in _ALLOWED_DTYPES:
            return _ALLOWED_DTYPES[key]
    elif dtype in (torch.float32, torch.float64):
        return dtype
    raise BaselineInputError(f"dtype: expected float64 or float32, got {dtype!r}")


def checked_device(device: torch.device | str, name: str = "device") -> torch.device:
    """``device`` as a torch.device that exists on this machine (``cpu``, ``cuda[:N]`` or ``mps``).

    Raises:
        BaselineInputError: unknown device string, or a CUDA/MPS device this machine does not have;
            the message starts with ``name`` (e.g. ``--device`` for a command-line option).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in _DEVICE_TYPES:
        raise BaselineInputError(f"{name}: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {str(device)!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BaselineInputError(
                f"{name}: {str(device)!r} requested but this machine has no usable CUDA device; use 'cpu'"
            )
        if dev.index is not None and dev.index >= count:
            raise BaselineInputError(f"{name}: {str(device)!r} requested but only cuda:0..cuda:{count - 1} exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BaselineInputError(f"{name}: 'mps' requested but this machine has no usable MPS device; use 'cpu'")
    return dev


def resolve_device(x: Any, device: torch.device | str | None = None) -> torch.device:
    """The device to compute on: ``device`` if given (checked to exist), else the tensor's own, else CPU."""
    if device is not None:
        return checked_device(device)
    if isinstance(x, torch.Tensor):
        return x.device
    return torch.device("cpu")


def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__module__.split('.')[0]} array of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _to_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Wrap ``x`` as a tensor, copying only when needed.

    Returns ``(tensor, owned)``; ``owned`` is False when the tensor may share memory with ``x``
    (callers then copy before writing).
    """
    if isinstance(x, torch.Tensor):
        return x.detach(), False
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise BaselineInputError(f"{name}: cannot convert {_describe(x)} to an array ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise BaselineInputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    owned = not isinstance(x, np.ndarray)  # views (np.memmap, slices) share the caller's memory
    if not arr.dtype.isnative or not arr.flags.writeable:
        # torch.from_numpy needs native byte order and warns on read-only (e.g. memory-mapped) arrays.
        arr, owned = arr.astype(arr.dtype.newbyteorder("="), copy=True), True
    return torch.from_numpy(arr), owned


def _checked_matrix(
    t: torch.Tensor,
    owned: bool,
    name: str,
    rows: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    if t.ndim != 2:
        raise BaselineInputError(f"{name}: expected a 2-D array [N, D], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise BaselineInputError(f"{name}: expected a non-empty [N, D] array, got shape {tuple(t.shape)}")
    if rows is not None and t.shape[0] != rows:
        raise BaselineInputError(f"{name}: has {t.shape[0]} rows but labels has {rows} entries")
    if t.dtype == torch.bool or t.is_complex():
        raise BaselineInputError(f"{name}: expected real numbers, got dtype {t.dtype}")
    out = t.to(device=device, dtype=dtype)
    if not owned and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        out = out.clone()  # .to() was a no-op: never hand out the caller's memory
    # A NaN or Inf anywhere makes the sum non-finite: one fast reduction instead of an N x D
    # boolean mask; the mask is only built when the sum says something is wrong (or overflowed).
    if not bool(torch.isfinite(out.sum())):
        finite = torch.isfinite(out)
        if not bool(finite.all()):
            bad_rows = ~finite.all(dim=1)
            original = t[bad_rows.to(t.device)]
            if bool(torch.isfinite(original).all()):  # finite before the dtype conversion
                raise BaselineInputError(
                    f"{name}: values up to {float(original.abs().max()):.3g} overflow {dtype}; compute in float64"
                )
            bad = int(bad_rows.sum())
            raise BaselineInputError(f"{name}: contains NaN or Inf in {bad} of {out.shape[0]} rows")
    return out


def to_unit_scale(x: torch.Tensor) -> int:
    """Divide ``x`` in place by the power of two 2**k that brings max |x| into [0.5, 1); returns k.

    Exact (a power of two only changes the exponent), so every later step sees the same numbers
    up to that factor, but far from overflow: a Gram matrix of such features is at most N per
    entry. All-zero ``x`` is left alone (k = 0).
    """
    if x.numel() == 0:
        return 0
    low, high = torch.aminmax(x)  # one pass, no |x| temporary
    biggest = max(-float(low), float(high))
    if biggest == 0.0:
        return 0
    k = math.frexp(biggest)[1]
    if abs(k) < 1000:
        x.mul_(2.0**-k)
    else:  # 2**-k itself is not a float64 for subnormal or near-overflow input: two steps
        half = -k // 2
        x.mul_(2.0**half).mul_(2.0 ** (-k - half))
    return k


def unscaled(value: float, exponent: int) -> float:
    """``value * 2**exponent`` as a float: inf or 0 where that leaves float64's range.

    A baseline that divided its features by 2**k (:func:`to_unit_scale`) converts an absolute
    constant with ``unscaled(c, -2 * k)`` for a variance-like one, and a variance it measured back
    to the caller's units with ``unscaled(v, 2 * k)``.
    """
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.copysign(math.inf, value)


def format_scaled(value: float, exponent: int) -> str:
    """``value * 2**exponent`` printed like ``%.3g``, also beyond float64's range (e.g. 2.3e-400)."""
    if value == 0.0 or not math.isfinite(value):
        return f"{value:.3g}"
    log10 = math.log10(abs(value)) + exponent * math.log10(2.0)
    power = math.floor(log10)
    mantissa = math.copysign(10.0 ** (log10 - power), value)
    if -300 < power < 300:
        return f"{mantissa * 10.0**power:.3g}"
    return f"{mantissa:.3g}e{power:+d}"


def centre_columns(x: torch.Tensor) -> torch.Tensor:
    """Subtract each column's mean from ``x`` in place; returns ``x``.

    A constant column does not centre to exact zeros when its mean rounds (0.1 * N / N != 0.1):
    it leaves noise of about N * eps times its magnitude, which a scale-free rank tolerance would
    then take for signal when every column is constant. Constant columns (max == min) are set to
    exact zeros instead.
    """
    constant = x.amax(dim=0) == x.amin(dim=0)  # two passes beat aminmax(dim=0) here by 3x
    x -= x.mean(dim=0, keepdim=True)
    if bool(constant.any()):
        x[:, constant] = 0.0
    return x


def as_float64(
    x: Any,
    name: str,
    *,
    rows: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Validated floating 2-D matrix as a fresh tensor.

    Args:
        x: array-like of shape [N, D] (numpy, torch on any device, or nested lists).
        name: argument name used in error messages (e.g. ``"features"``).
        rows: expected N (usually the number of labels); a mismatch is rejected.
        dtype: compute dtype, float64 by default (float32 allowed, see :func:`resolve_dtype`).
        device: where to put the result; default the input's own device (CPU for numpy).

    Returns:
        Tensor [N, D] of ``dtype`` on ``device`` that does not share memory with ``x``.

    Raises:
        BaselineInputError: not 2-D, empty, non-numeric, wrong number of rows, NaN or Inf.
    """
    dtype = resolve_dtype(dtype)
    t, owned = _to_tensor(x, name)
    return _checked_matrix(t, owned, name, rows, dtype, resolve_device(x, device))


def is_regression_labels(labels: Any) -> bool:
    """True when ``labels`` hold floating-point values (regression targets), False for ints."""
    if isinstance(labels, torch.Tensor):
        return labels.is_floating_point()
    arr = np.asarray(labels)
    return arr.dtype.kind == "f"


def classification_labels(
    labels: Any,
    n: int | None = None,
    *,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    name: str = "labels",
) -> tuple[torch.Tensor, int]:
    """Class ids as int64 ``0..C-1`` and the number of classes C.

    Args:
        labels: integer array-like [N] (a [N, 1] column is accepted).
        n: expected N (rows of the features); a mismatch is rejected.
        num_classes: if given, labels must already be ids in ``[0, num_classes)`` and every class
            needs at least one sample; if None, the distinct values are remapped to ``0..C-1``.
        device: where to put the result; default the input's own device (CPU for numpy).
        name: argument name used in error messages.

    Returns:
        ``(y, C)``: tensor [N] int64 on ``device`` with values in ``[0, C)``, and C >= 2.

    Raises:
        BaselineInputError: wrong shape or dtype, length mismatch, fewer than 2 classes,
            ids out of range or an empty class (with ``num_classes``).
    """
    t, _ = _to_tensor(labels, name)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise BaselineInputError(f"{name}: expected class ids of shape [N], got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise BaselineInputError(
            f"{name}: expected integer class ids, got dtype {t.dtype} (float [N, K] means regression targets)"
        )
    if n is not None and t.shape[0] != n:
        raise BaselineInputError(f"{name}: has {t.shape[0]} entries but features has {n} rows")
    y = t.to(device=resolve_device(labels, device), dtype=torch.int64)
    if num_classes is None:
        values, y = torch.unique(y, sorted=True, return_inverse=True)
        num = int(values.numel())
        if num < 2:
            raise BaselineInputError(f"{name}: need at least 2 distinct classes, got {num}")
        return y.clone(), num
    num = int(num_classes)
    if num < 2:
        raise BaselineInputError(f"num_classes: need at least 2 classes, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num):
        raise BaselineInputError(
            f"{name}: ids must lie in [0, {num}) for num_classes={num}, got range [{int(y.min())}, {int(y.max())}]"
        )
    counts = torch.bincount(y, minlength=num)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise BaselineInputError(f"{name}: class(es) {shown} of num_classes={num} have no samples")
    return (y.clone() if y.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() else y), num


def regression_targets(
    labels: Any,
    n: int | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    name: str = "labels",
) -> torch.Tensor:
    """Regression targets as a fresh floating tensor [N, K] (a 1-D [N] input becomes [N, 1]).

    Raises:
        BaselineInputError: wrong shape, length mismatch, empty, NaN or Inf.
    """
    t, owned = _to_tensor(labels, name)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise BaselineInputError(f"{name}: expected regression targets [N] or [N, K], got shape {tuple(t.shape)}")
    return _checked_matrix(t, owned, name, n, resolve_dtype(dtype), resolve_device(labels, device))


def softmax_probs(
    source_logits: Any,
    n: int | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    name: str = "source_logits",
) -> torch.Tensor:
    """Row-wise softmax of source-head logits [N, Cs], computed as ``exp(z - max) / sum``.

    The conversion to ``dtype`` (float64 by default) happens before the softmax, so probabilities
    that would underflow in float32 stay positive. Returns a fresh tensor [N, Cs].
    """
    z = as_float64(source_logits, name, rows=n, dtype=dtype, device=device)
    z -= z.max(dim=1, keepdim=True).values
    z.exp_()
    z /= z.sum(dim=1, keepdim=True)
    return z


def as_probabilities(
    source_probs: Any,
    n: int | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    name: str = "source_probs",
    atol: float = 1e-3,
) -> torch.Tensor:
    """Already-normalised source probabilities [N, Cs] as a fresh tensor (no renormalisation).

    Raises:
        BaselineInputError: negative entries or rows not summing to 1 within ``atol``.
    """
    p = as_float64(source_probs, name, rows=n, dtype=dtype, device=device)
    if bool((p < 0).any()):
        raise BaselineInputError(f"{name}: probabilities must be non-negative")
    sums = p.sum(dim=1)
    worst = float((sums - 1).abs().max())
    if worst > atol:
        raise BaselineInputError(f"{name}: rows must sum to 1 (worst row is off by {worst:.3g})")
    return p


def gram(x: torch.Tensor, *, rows: bool = False) -> torch.Tensor:
    """Gram matrix ``x^T x`` [D, D] of a 2-D tensor ``x`` [N, D] (``x x^T`` [N, N] with ``rows``).

    On the CPU this goes through numpy, whose matmul recognises a product with its own transpose
    and calls BLAS ``syrk``: half the flops of the general product torch uses, and the largest
    single cost of LogME, H-Score and TransRate. Elsewhere it is a plain torch matmul.
    """
    if x.device.type == "cpu" and not x.requires_grad:
        a = x.numpy()
        return torch.from_numpy(a @ a.T if rows else a.T @ a)
    return x @ x.T if rows else x.T @ x


def symmetric_eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) [m] and eigenvectors [m, m] of a symmetric matrix ``a`` [m, m].

    On the CPU this is numpy's LAPACK ``syevd`` (OpenBLAS), measurably faster here than torch's
    MKL build for the D x D Grams the baselines decompose; elsewhere ``torch.linalg.eigh``.
    """
    if a.device.type == "cpu" and not a.requires_grad:
        eigvals, vecs = np.linalg.eigh(a.numpy())
        return torch.from_numpy(eigvals), torch.from_numpy(vecs)
    return torch.linalg.eigh(a)
