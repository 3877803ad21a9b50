"""kNN: leave-one-out accuracy of a weighted k-nearest-neighbour classifier on the PTM's features.

The cheapest proxy of "how well would a classifier on these features do": Renggli et al. (CVPR
2022, "Which model to transfer? Finding the needle in the growing haystack") find a kNN
classifier's accuracy on the target a strong and cheap model-selection proxy. Recipe here: the
weighted kNN of DINO's evaluation (Caron et al., ICCV 2021), k = 20 neighbours by cosine
similarity, each voting for its class with weight exp(similarity / 0.07), applied leave-one-out
on the target's labelled images (no split to choose; every image is classified by all others).
Features are centred first (mean over the target's images), so features that are all positive,
such as ReLU outputs, do not make every pair look alike.

Feature scale: scale invariant (centring and unit-normalising remove any factor c > 0); the
features are divided by a power of two near their magnitude first (exact), so 1e200 does not
overflow the norms. Features that centre to zero everywhere (constant) have no neighbours to rank
and are rejected. Cost: one N x N similarity matrix, in row blocks.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

from spider.baselines._inputs import as_float64, centre_columns, classification_labels, to_unit_scale
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["knn", "knn_loo_accuracy"]

NEIGHBOURS = 20
TEMPERATURE = 0.07
_BLOCK_ROWS = 2048  # rows of the similarity matrix held at once


def knn_loo_accuracy(x: torch.Tensor, y: torch.Tensor, num_classes: int, k: int = NEIGHBOURS,
                     temperature: float = TEMPERATURE) -> float:
    """Leave-one-out accuracy of the weighted kNN classifier.

    Args:
        x: [N, D] unit-norm (or zero) rows.
        y: [N] int64 classes in ``[0, num_classes)``.
        num_classes: C.
        k: neighbours per image (capped at N - 1).
        temperature: vote weight exp(cosine / temperature).

    Returns:
        The fraction of images whose weighted vote names their own class, in [0, 1].
    """
    n = x.shape[0]
    k = min(k, n - 1)
    correct = 0
    for start in range(0, n, _BLOCK_ROWS):
        rows = torch.arange(start, min(start + _BLOCK_ROWS, n), device=x.device)
        sims = x[rows] @ x.T  # [B, N]
        sims[torch.arange(len(rows), device=x.device), rows] = -torch.inf  # leave the image itself out
        top, index = sims.topk(k, dim=1)
        # Weights relative to each row's nearest neighbour: the largest is exp(0) = 1, never an underflow to 0.
        weights = torch.exp((top - top[:, :1]) / temperature)
        votes = x.new_zeros(len(rows), num_classes).scatter_add_(1, y[index], weights)
        correct += int((votes.argmax(dim=1) == y[rows]).sum())
    return correct / n


@register_baseline("knn", scale_invariant=True)
def knn(
    *,
    features: Any,
    labels: Any,
    source_logits: Any = None,
    k: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """kNN (Renggli et al. 2022; DINO's weighted kNN): leave-one-out accuracy in [0, 1], higher is better.

    ``k``: neighbours per image (capped at N - 1); ``temperature``: a neighbour's vote is
    exp(cosine similarity / temperature). The other arguments are every feature baseline's
    (e.g. :func:`spider.baselines.lfc.lfc`); ``source_logits`` is ignored.
    """
    try:
        neighbours = 0 if isinstance(k, bool) else operator.index(k)  # any integer type, numpy's too
    except TypeError:
        neighbours = 0
    if neighbours < 1:
        raise BaselineInputError(f"k: expected a positive int, got {k!r}")
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, bool) or not 0 < temperature < math.inf:
        raise BaselineInputError(f"temperature: expected a finite float > 0, got {temperature!r}")
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    x = as_float64(features, "features", rows=y.shape[0], dtype=dtype, device=device)
    y = y.to(x.device)
    to_unit_scale(x)  # x is our own copy
    centre_columns(x)
    norms = x.norm(dim=1, keepdim=True)
    if not bool((norms > 0).any()):
        raise BaselineInputError("features: every image has the same features (constant after centring): "
                                 "kNN has no neighbours to rank")
    x = x / norms.clamp_min(torch.finfo(x.dtype).tiny)
    return knn_loo_accuracy(x, y, num_classes, neighbours, float(temperature))
