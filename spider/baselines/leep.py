"""LEEP: Log Expected Empirical Prediction (Nguyen et al., ICML 2020).

The source head's class probabilities P [N, Cs] act as a soft dummy label z. LEEP builds the
empirical conditional p(y | z) from the target data and scores the average log-likelihood of the
true labels under the "expected empirical predictor" sum_z P[i, z] p(y_i | z).

Source classes that receive no probability mass at all on the target data (possible when the
probabilities underflowed to exact zeros, e.g. a float32 softmax) have an undefined p(y | z); the
official implementation returns NaN then. They contribute nothing to any prediction, so we drop
them, which is the limit of any small positive mass.
"""

from __future__ import annotations

from typing import Any

import torch

from spider.baselines._inputs import as_probabilities, classification_labels, softmax_probs
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["leep", "leep_from_probs", "source_probabilities"]


def source_probabilities(
    source_logits: Any,
    source_probs: Any,
    n: int,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Source-head probabilities [N, Cs] from exactly one of ``source_logits`` / ``source_probs``.

    Logits go through a float64 softmax; probabilities are taken as given (no renormalisation, so
    a stored float32 softmax is reproduced exactly).
    """
    if (source_logits is None) == (source_probs is None):
        raise BaselineInputError("pass exactly one of source_logits [N, Cs] or source_probs [N, Cs]")
    if source_logits is not None:
        return softmax_probs(source_logits, n, dtype=dtype, device=device)
    return as_probabilities(source_probs, n, dtype=dtype, device=device)


def leep_from_probs(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """LEEP of validated inputs.

    Args:
        probs: [N, Cs] source-class probabilities (rows sum to 1), floating.
        y: [N] int64 target classes in ``[0, num_classes)``.
        num_classes: number of target classes C.

    Returns:
        mean_i log sum_z probs[i, z] * p(y_i | z), a float <= 0.
    """
    # joint[y, z] = sum of probs[i, z] over samples of class y (the 1/N of the paper cancels).
    joint = probs.new_zeros(num_classes, probs.shape[1]).index_add_(0, y, probs)
    mass = joint.sum(dim=0)  # [Cs] total probability of each source class
    used = mass > 0
    cond = joint[:, used] / mass[used]  # [C, Cs'] p(y | z)
    # Expected empirical prediction of each sample's own label: sum_z P[i, z] p(y_i | z).
    eep = (probs[:, used] * cond.index_select(0, y)).sum(dim=1)
    return float(eep.log().mean())


@register_baseline("leep", needs=("source_logits",), scale_invariant=True)
def leep(
    *,
    labels: Any,
    source_logits: Any = None,
    source_probs: Any = None,
    features: Any = None,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """LEEP (Nguyen et al. 2020) from source-head logits; higher is better (<= 0).

    Args:
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: [N, Cs] source-head logits (softmax taken here in float64), or
        source_probs: [N, Cs] already-normalised probabilities instead (used as given).
        features: ignored (accepted so every baseline takes the same keywords).
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        dtype, device: compute dtype (float64 default) and device.
    """
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    probs = source_probabilities(source_logits, source_probs, y.shape[0], dtype=dtype, device=device)
    return leep_from_probs(probs, y.to(probs.device), num_classes)
