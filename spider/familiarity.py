"""How familiar a task is to a ranker: its class centres against those of the ranker's training tasks.

A learned ranker knows the domains its training tasks show and little beyond them: on the
validation targets, scorers trained without the bank tasks of the target's domain fall from +0.612
to +0.258 wtau on zoo40 (``experiments/zoo40/held_out_domain.md``). This module says when a task is
that far out, from the general-encoder class centres alone (no PTM runs on it):

* :class:`TaskReference` - the training tasks' unit class centres and the pool datasets each task
  draws from. :meth:`~TaskReference.similarities`: a task's similarity to each of them, the
  symmetric mean best-match cosine of class centres (for each class of one task the best cosine to
  a class of the other, averaged, both ways, halved). Its ``threshold`` is the highest similarity any training task has to its nearest
  training task sharing no pool dataset with it: as close as a task of a dataset the ranker never
  trained on came, inside the bank itself. Nothing is tuned on targets.
* :meth:`TaskReference.familiarity` - a task's similarity to its nearest training task, the
  threshold, and ``novel`` (similarity at or below the threshold).

``spider rank`` reports it for every ranked task and warns on a novel one; with a forward baseline
(``--rerank-baseline``) a novel task's top k are ordered by the baseline alone
(:data:`spider.modules.NOVEL_RERANK_WEIGHT`). Training writes the reference into the checkpoint
(``checkpoint["spider"]["reference"]``) as plain tensors, read back with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spider.errors import SpiderError

__all__ = ["Familiarity", "TaskReference", "unit_centres"]


def unit_centres(centres: Any) -> np.ndarray:
    """Class centres [C, D] scaled to unit length (float64; an all-zero centre stays zero)."""
    c = np.asarray(centres.detach().cpu() if isinstance(centres, torch.Tensor) else centres, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
        raise SpiderError(f"class centres: expected [C, D] with C, D >= 1, got shape {tuple(c.shape)}")
    if not np.isfinite(c).all():
        raise SpiderError("class centres: non-finite values")
    return c / np.linalg.norm(c, axis=1, keepdims=True).clip(1e-12)


@dataclass(frozen=True)
class Familiarity:
    """A task against a :class:`TaskReference`."""

    similarity: float  # to the nearest training task
    nearest: int  # index of that training task
    threshold: float  # the reference's novelty threshold
    novel: bool  # similarity <= threshold

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (a threshold of -inf, training tasks of one pool dataset, is None)."""
        return {"similarity": self.similarity, "nearest_training_task": self.nearest,
                "threshold": self.threshold if math.isfinite(self.threshold) else None, "novel": self.novel}


class TaskReference:
    """The training tasks of a ranker: unit class centres, task boundaries and pool datasets.

    Args:
        centres: one [C_k, D] array of class centres per training task (general encoder).
        datasets: the pool datasets each task draws classes from (same length as ``centres``).
        threshold: the novelty threshold when already known (a checkpoint stores it: computing it
            compares every pair of tasks); None computes it.
    """

    def __init__(self, centres: Sequence[Any], datasets: Sequence[Sequence[str]],
                 threshold: float | None = None) -> None:
        if len(centres) < 1 or len(centres) != len(datasets):
            raise SpiderError(f"task reference: expected one dataset list per task and at least one task, "
                              f"got {len(centres)} tasks and {len(datasets)} dataset lists")
        units = [unit_centres(c) for c in centres]
        if len({u.shape[1] for u in units}) != 1:
            raise SpiderError(f"task reference: class centres of different widths {sorted({u.shape[1] for u in units})}")
        self.centres = np.concatenate(units).astype(np.float32)
        self.offsets = np.cumsum([0] + [u.shape[0] for u in units])
        names = sorted({d for ds in datasets for d in ds})
        self.datasets = names
        self.membership = np.array([[d in set(ds) for d in names] for ds in datasets], dtype=bool)
        if threshold is not None and (math.isnan(threshold) or threshold == math.inf):
            raise SpiderError(f"task reference: expected a threshold below +inf, got {threshold}")
        self.threshold = self._threshold() if threshold is None else float(threshold)

    @property
    def num_tasks(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.centres.shape[1]

    def similarities(self, centres: Any) -> np.ndarray:
        """[K] similarity of a task's class centres [C, D] to every training task."""
        own = unit_centres(centres).astype(np.float32)
        if own.shape[1] != self.dim:
            raise SpiderError(f"task reference: expected class centres of width {self.dim}, got {own.shape[1]}")
        cos = own @ self.centres.T  # [C, N]
        starts = self.offsets[:-1]
        own_side = np.maximum.reduceat(cos, starts, axis=1).mean(0)  # [K]: each own class's best match, averaged
        best = cos.max(0)  # [N]: each reference class's best match
        ref_side = np.add.reduceat(best, starts) / np.diff(self.offsets)
        return (0.5 * (own_side + ref_side)).astype(np.float64)

    def familiarity(self, centres: Any) -> Familiarity:
        sims = self.similarities(centres)
        nearest = int(np.argmax(sims))
        similarity = float(sims[nearest])
        return Familiarity(similarity, nearest, self.threshold,
                           bool(math.isfinite(self.threshold) and similarity <= self.threshold))

    def subset(self, tasks: Sequence[int]) -> TaskReference:
        """The reference of training tasks ``tasks`` only (its threshold recomputed)."""
        parts = [self.centres[self.offsets[k]:self.offsets[k + 1]] for k in tasks]
        names = [[d for d, m in zip(self.datasets, self.membership[k]) if m] for k in tasks]
        return TaskReference(parts, names)

    def _threshold(self) -> float:
        """Max over tasks of the similarity to the nearest task sharing no pool dataset (-inf when
        every pair of tasks shares one: then nothing is called novel)."""
        disjoint = ~(self.membership.astype(np.int64) @ self.membership.T.astype(np.int64)).astype(bool)
        best = -math.inf
        for k in range(self.num_tasks):
            if disjoint[k].any():
                sims = self.similarities(self.centres[self.offsets[k]:self.offsets[k + 1]])
                best = max(best, float(sims[disjoint[k]].max()))
        return best

    # -- checkpoint form: plain tensors and strings (torch.load(weights_only=True)) ----------------
    def to_dict(self) -> dict[str, Any]:
        return {"centres": torch.from_numpy(self.centres.copy()), "offsets": torch.from_numpy(self.offsets.copy()),
                "datasets": list(self.datasets), "membership": torch.from_numpy(self.membership.copy()),
                "threshold": self.threshold}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "task reference") -> TaskReference:
        """Rebuild from :meth:`to_dict`; a malformed entry raises one line naming ``where``."""
        try:
            centres = np.asarray(values["centres"], dtype=np.float32)
            offsets = np.asarray(values["offsets"], dtype=np.int64)
            membership = np.asarray(values["membership"], dtype=bool)
            names = [str(d) for d in values["datasets"]]
            threshold = None if values.get("threshold") is None else float(values["threshold"])
        except (KeyError, TypeError, ValueError) as err:
            raise SpiderError(f"{where}: expected centres, offsets, datasets and membership ({err})") from None
        ok = (centres.ndim == 2 and offsets.ndim == 1 and len(offsets) >= 2 and offsets[0] == 0
              and offsets[-1] == centres.shape[0] and bool((np.diff(offsets) >= 1).all())
              and membership.shape == (len(offsets) - 1, len(names)))
        if not ok:
            raise SpiderError(f"{where}: inconsistent shapes (centres {centres.shape}, offsets {offsets.shape}, "
                              f"membership {membership.shape}, {len(names)} datasets)")
        parts = [centres[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]
        try:
            return cls(parts, [[d for d, m in zip(names, row) if m] for row in membership], threshold)
        except SpiderError as err:
            raise SpiderError(f"{where}: {err}") from None
