"""Task tokens: class centres (per-class feature means) of a task's samples under one encoder.

The paper's task token of a task is the set of its class prototypes under a feature extractor:
the general encoder for the coarse ranking, a PTM's own features for its PTM-specific token.
:func:`class_centres` is the one implementation of it used by the datamodule, the label cache
and :mod:`spider.rank`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from spider.errors import SpiderError

__all__ = ["class_centres", "pad_last_dim"]


def class_centres(features: Any, labels: Any, num_classes: int) -> torch.Tensor:
    """Mean feature of every class.

    Args:
        features: [N, D] float (numpy or torch; float16 is upcast).
        labels: [N] int class ids in ``[0, num_classes)``.
        num_classes: C, the number of centres returned.

    Returns:
        [C, D] float32 (float64 if ``features`` is float64) on the features' device; a class
        without samples gets an all-zero centre (callers mask it out).
    """
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2:
        raise SpiderError(f"class_centres: features must be [N, D], got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise SpiderError(f"class_centres: labels must be [N={x.shape[0]}], got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise SpiderError(f"class_centres: labels must be integer class ids, got {y.dtype}")
    if num_classes < 1:
        raise SpiderError(f"class_centres: num_classes must be >= 1, got {num_classes}")
    y = y.to(device=x.device, dtype=torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise SpiderError(f"class_centres: labels must lie in [0, {num_classes}), "
                          f"got [{int(y.min())}, {int(y.max())}]")
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def pad_last_dim(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last dimension of ``x`` up to ``size`` (PTM-specific tokens of mixed dims)."""
    if x.shape[-1] > size:
        raise SpiderError(f"pad_last_dim: last dim {x.shape[-1]} exceeds target size {size}")
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.pad(x, (0, size - x.shape[-1]))
