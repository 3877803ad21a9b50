"""LFC: Label-Feature Correlation (Deshpande et al., 2021, "A linearized framework and a new
benchmark for model selection for fine-tuning").

LFC is the cosine similarity between the mean-centred linear kernel K = F Fᵀ and the mean-centred
label-agreement matrix L (L_ij = +1 if y_i = y_j else -1), both N x N. Expanding the inner products
gives an exact closed form from class sums and the D x D Gram matrix, in O(N·D²) time and O(D²)
memory, never forming an N x N matrix. With s = sum_i f_i, S_c = sum of class c's features,
n_c = class sizes and N² entries per matrix:

    sum(K) = |s|²,  <K, L> = 2 sum_c |S_c|² - |s|²,  |K|_F² = |FᵀF|_F²,
    sum(L) = 2 sum_c n_c² - N²,  |L|_F² = N²,
    <K - mean(K), L - mean(L)> = <K, L> - sum(K) sum(L) / N²,
    |K - mean(K)|² = |K|² - sum(K)² / N²   (likewise for L).

LFC is a cosine similarity, so it is scale invariant: it runs on features divided by a power of
two near their magnitude (exact), which keeps |FᵀF|² of features such as 1e200 from overflowing.
When every row is the same (or F Fᵀ is otherwise constant) the centred kernel is zero and the
cosine undefined: a :class:`~spider.errors.BaselineInputError` says so.
"""

from __future__ import annotations

from typing import Any

import torch

from spider.baselines._inputs import as_float64, classification_labels, to_unit_scale
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["lfc", "lfc_from_features"]

_CANCELLATION = 64  # |K - mean K|² within this many eps of |K|² is rounding noise of zero


def lfc_from_features(f: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """LFC ("dot" kernel) of validated inputs.

    Args:
        f: [N, D] floating features (uncentred, as in the reference).
        y: [N] int64 classes in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        Cosine similarity of the centred kernel and label matrices, a float in [-1, 1].

    Raises:
        BaselineInputError: the centred kernel is zero (to rounding), e.g. all rows equal.
    """
    n = float(f.shape[0])
    total = f.sum(dim=0)  # s [D]
    class_sums = f.new_zeros(num_classes, f.shape[1]).index_add_(0, y, f)  # S_c [C, D]
    counts = torch.bincount(y, minlength=num_classes).to(f.dtype)

    sum_k = total.square().sum()
    sum_l = 2 * counts.square().sum() - n * n
    k_dot_l = 2 * class_sums.square().sum() - sum_k
    gram = f.T @ f
    k_norm2 = gram.square().sum() - sum_k * sum_k / (n * n)
    # |K|² - sum(K)²/N² cancels to rounding noise of |K|² when K is constant: that is a zero
    # centred kernel, not a direction to correlate with.
    if float(k_norm2) <= _CANCELLATION * torch.finfo(f.dtype).eps * float(gram.square().sum()):
        raise BaselineInputError(
            "features: the kernel F F^T is constant to rounding (e.g. every row is the same); "
            "LFC's correlation is undefined"
        )
    l_norm2 = n * n - sum_l * sum_l / (n * n)
    numerator = k_dot_l - sum_k * sum_l / (n * n)
    return float(numerator / torch.sqrt(k_norm2 * l_norm2))


@register_baseline("lfc", scale_invariant=True)
def lfc(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """LFC (Deshpande et al. 2021), dot-product kernel, exact closed form; higher is better.

    Args:
        features: [N, D] PTM features of the target data.
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: ignored.
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        dtype, device: compute dtype (float64 default) and device.
    """
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    f = as_float64(features, "features", rows=y.shape[0], dtype=dtype, device=device)
    to_unit_scale(f)  # f is our own copy; LFC is scale invariant
    return lfc_from_features(f, y.to(f.device), num_classes)
