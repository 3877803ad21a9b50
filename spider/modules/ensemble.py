"""``ScorerEnsemble``: several trained scorers of one zoo ranking together.

A scorer trained on a few dozen fine-tuned tasks varies from seed to seed (on the mini zoo the
mean weighted tau of single seeds spreads by about 0.05); averaging seeds removes that variance at
the cost of one more scorer forward per member (milliseconds). Members' scores live on different
scales, so each member's scores of a task are standardised over the PTMs first (zero mean, unit
std) and the ensemble's score is their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spider.errors import ConfigError


def standardise_scores(scores: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[B, M] scores -> per-task z-scores over the M models (a constant row becomes zeros)."""
    centred = scores - scores.mean(dim=-1, keepdim=True)
    return centred / centred.std(dim=-1, unbiased=False, keepdim=True).clamp_min(eps)


class ScorerEnsemble(nn.Module):
    """Mean of the members' standardised scores; ranks like one scorer (``forward(task_tokens,
    task_mask) -> [B, M]``) and exposes the first member's ``hparams``/``spider_info``.

    Raises:
        ConfigError: no member, or members of different zoos (PTMs or task-token width).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("ensemble: expected at least one scorer")
        first = members[0]
        for i, other in enumerate(members[1:], 1):
            same = (other.num_models == first.num_models
                    and int(other.hparams.task_dim) == int(first.hparams.task_dim)
                    and list(other.hparams.get("model_names") or []) == list(first.hparams.get("model_names") or []))
            if not same:
                raise ConfigError(f"ensemble: member {i} ranks another zoo than member 0 (PTMs or task_dim differ)")
        self.members = nn.ModuleList(members)
        self.hparams = first.hparams
        self.spider_info: Any = getattr(first, "spider_info", None)

    @property
    def num_models(self) -> int:
        return self.members[0].num_models

    def forward(self, task_tokens: torch.Tensor, task_mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([standardise_scores(m(task_tokens, task_mask)) for m in self.members]).mean(0)
