"""Ranking metrics: a functional core (``spider.metrics.functional``) and torchmetrics classes.

``from spider.metrics import WeightedTau`` gives a DDP-safe mean of per-task weighted tau;
``spider.metrics.functional.PROTOCOLS`` names the two weighted-tau protocols reports must cite.
The classes are imported on first use, so the functional core loads without torchmetrics.
"""

from typing import Any

from spider.metrics.functional import PROTOCOLS, MetricInputError

_CLASSES = ("PearsonPerTask", "SpearmanPerTask", "Top1Regret", "TopKHit", "WeightedTau")

__all__ = ["PROTOCOLS", "MetricInputError", *_CLASSES]


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        from spider.metrics import classes

        return getattr(classes, name)
    raise AttributeError(f"module 'spider.metrics' has no attribute {name!r}")
