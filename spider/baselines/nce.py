"""NCE: Negative Conditional Entropy (Tran et al., ICCV 2019) on argmax pseudo-labels.

The source head's top-1 class z_i = argmax_z P[i, z] serves as a hard source label; the score is
-H(Y | Z) of the empirical joint distribution of (y, z) on the target data. With few samples per
source class many pseudo-labels are singletons, which makes NCE biased towards 0 for small N.
"""

from __future__ import annotations

from typing import Any

import torch

from spider.baselines._inputs import as_float64, as_probabilities, classification_labels
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["nce", "nce_from_pseudo_labels"]


def nce_from_pseudo_labels(z: torch.Tensor, num_source: int, y: torch.Tensor, num_classes: int) -> float:
    """-H(Y | Z) in nats of two label vectors.

    Args:
        z: [N] int64 source pseudo-labels in ``[0, num_source)``.
        num_source: number of source classes Cs.
        y: [N] int64 target classes in ``[0, num_classes)``.
        num_classes: number of target classes C.

    Returns:
        sum_{z, y} p(z, y) log p(y | z), a float <= 0.
    """
    n = y.shape[0]
    counts = torch.bincount(z * num_classes + y, minlength=num_source * num_classes)
    joint = counts.view(num_source, num_classes).to(torch.float64) / n  # p(z, y)
    p_z = joint.sum(dim=1)
    # sum p(z,y) log p(z,y) - sum p(z) log p(z); xlogy makes the empty cells exact zeros.
    return float(torch.xlogy(joint, joint).sum() - torch.xlogy(p_z, p_z).sum())


@register_baseline("nce", needs=("source_logits",), scale_invariant=True)
def nce(
    *,
    labels: Any,
    source_logits: Any = None,
    source_probs: Any = None,
    features: Any = None,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> float:
    """NCE (Tran et al. 2019) with argmax pseudo-labels of the source head; higher is better (<= 0).

    Args:
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: [N, Cs] source-head logits, or
        source_probs: [N, Cs] source probabilities (argmax of either is the same: softmax is
            monotone; ties resolve to the first class).
        features: ignored (accepted so every baseline takes the same keywords).
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        device, dtype: where and in which precision the argmax is taken (float64 default).
    """
    if (source_logits is None) == (source_probs is None):
        raise BaselineInputError("pass exactly one of source_logits [N, Cs] or source_probs [N, Cs]")
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    if source_logits is not None:
        scores = as_float64(source_logits, "source_logits", rows=y.shape[0], dtype=dtype, device=device)
    else:
        scores = as_probabilities(source_probs, y.shape[0], dtype=dtype, device=device)
    z = scores.argmax(dim=1)
    return nce_from_pseudo_labels(z, scores.shape[1], y.to(z.device), num_classes)
