"""Learning-rate schedules shared by the ranker (token_scorer) and the pipeline's pre-training and
fine-tuning."""

from __future__ import annotations

import math

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    A class (not a lambda) so that LambdaLR's state_dict holds plain ints."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = int(warmup), max(int(total), 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
