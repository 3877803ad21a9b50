"""The scoring core shared by :mod:`spider.rank` (stored tasks, CLI) and :mod:`spider.rank_images`
(image folders): loading a ranker checkpoint, scoring (and re-ranking) a task's tokens, and the
:class:`RankResult` both return."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from spider.errors import ConfigError, StoreError


@dataclass
class RankResult:
    """PTMs of one task, best first.

    Attributes:
        models: PTM ids, best first.
        scores: their scores: without re-ranking the general scores; with re-ranking z-scores
            over the PTMs (re-scored PTMs: general and specific z-scores fused, see
            :meth:`spider.modules.ReRanker.rerank_batch`), sorted like ``models``.
        tokens: per PTM, ``"general"`` or ``"specific"`` (re-scored with its own features).
        general_scores: ``{model id: general score}`` for every PTM.
        timings_ms: wall time per stage in milliseconds: ``load`` (checkpoint), ``tokens``
            (reading features, class centres), ``warmup`` (the process's first forward, one-off
            costs), ``score`` (all PTMs, one batched forward), ``rerank`` (specific tokens of the
            top k and re-scoring), ``total``. For images (:func:`rank_images`) ``tokens`` is
            ``extract_general`` (general encoder on the images, class centres) and ``rerank``
            is split into ``extract_topk`` (the k PTMs on the images) and ``rescore``.
        dataset, split, num_classes, num_samples: the task (for images: the folder's name and
            ``"images"``).
        images: the image folder ranked ("" for a stored dataset); class_names: its classes.
    """

    models: list[str]
    scores: list[float]
    tokens: list[str]
    general_scores: dict[str, float]
    timings_ms: dict[str, float] = field(default_factory=dict)
    dataset: str = ""
    split: str = "train"
    num_classes: int = 0
    num_samples: int = 0
    images: str = ""
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            **({"images": self.images, "class_names": self.class_names} if self.images else {}),
            "dataset": self.dataset,
            "split": self.split,
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "ranking": [
                {"rank": i + 1, "model": m, "score": s, "tokens": t}
                for i, (m, s, t) in enumerate(zip(self.models, self.scores, self.tokens))
            ],
            "general_scores": self.general_scores,
            "timings_ms": self.timings_ms,
        }


def _load_ranker(checkpoint: Union[str, os.PathLike, torch.nn.Module, Sequence[Union[str, os.PathLike]]],
                 device: str, rerank_topk: int) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    """(scorer in eval mode on ``device``, its checkpoint info, PTM ids in model-index order);
    several checkpoints rank as one :class:`~spider.modules.ensemble.ScorerEnsemble`."""
    from spider.modules.ensemble import ScorerEnsemble
    from spider.modules.scorer_registry import load_scorer
    from spider.modules import ReRanker, ReRanking

    if rerank_topk < 0:
        raise ConfigError(f"rerank_topk: expected an integer >= 0, got {rerank_topk}")
    if isinstance(checkpoint, (list, tuple)):
        if rerank_topk > 0 and len(checkpoint) > 1:
            raise ConfigError("--rerank-topk: re-ranking takes one checkpoint, not an ensemble")
        checkpoint = ScorerEnsemble([load_scorer(c, map_location=device) for c in checkpoint])
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_scorer(checkpoint, map_location=device)
    model = model.to(device).eval()
    info = getattr(model, "spider_info", None) or {}
    names = list(info.get("model_names") or model.hparams.get("model_names") or [])
    if len(names) != model.num_models:
        names = [f"model{m}" for m in range(model.num_models)]
    if isinstance(model, ScorerEnsemble) and len(model.members) == 1:
        model = model.members[0]
    if rerank_topk > 0 and not isinstance(model, (ReRanker, ReRanking)):
        raise ConfigError(f"rerank_topk={rerank_topk}: the checkpoint holds a {type(model).__name__}, "
                          "re-ranking needs a ReRanker (model=reranker)")
    return model, info, names


@dataclass
class _Scored:
    order: torch.Tensor  # int64 [M] model indices, best first
    scores: torch.Tensor  # [M] final scores (specific for re-scored models)
    general: torch.Tensor  # [M] general scores
    rescored: torch.Tensor  # bool [M]
    specific_seconds: float = 0.0  # time spent computing specific tokens (inside re-ranking)


def _score(model: torch.nn.Module, tokens: torch.Tensor, rerank_topk: int,
           specific_tokens: Callable[[int], torch.Tensor], timings: dict[str, float]) -> _Scored:
    """Score every PTM from ``tokens`` [C, Dg]; re-score the top k from ``specific_tokens(m)``
    ([C, D_m] class centres under PTM m). Adds ``warmup``, ``score`` and ``rerank`` to ``timings``."""
    from spider.datamodules.tokens import pad_last_dim

    mask = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    with torch.no_grad():
        # The first forward of a process pays one-off costs (lazy initialisation, kernel
        # selection: ~100x a steady-state call on CPU); time it apart from the scoring itself.
        t0 = time.perf_counter()
        model(tokens[None], mask[None])
        timings["warmup"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        general_scores = model(tokens[None], mask[None])[0]
        timings["score"] = time.perf_counter() - t0
    order = torch.argsort(general_scores, descending=True, stable=True)
    scored = _Scored(order, general_scores, general_scores, torch.zeros_like(general_scores, dtype=torch.bool))
    if rerank_topk > 0:
        t0 = time.perf_counter()
        max_dim = int(model.max_model_dim)

        def batch_tokens(models: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = torch.stack([pad_last_dim(specific_tokens(m), max_dim) for m in models.tolist()])
            scored.specific_seconds += time.perf_counter() - start
            return out.to(tokens.device)

        result = model.rerank(tokens, mask, rerank_topk, batch_tokens)
        scored.order, scored.scores, scored.rescored = result.order, result.scores, result.rescored
        timings["rerank"] = time.perf_counter() - t0
    return scored


def _result(scored: _Scored, names: list[str], timings: dict[str, float], **task: Any) -> RankResult:
    order = scored.order.tolist()
    return RankResult(
        models=[names[m] for m in order],
        scores=[float(scored.scores[m]) for m in order],
        tokens=["specific" if bool(scored.rescored[m]) else "general" for m in order],
        general_scores={names[m]: float(scored.general[m]) for m in range(len(names))},
        timings_ms={k: v * 1000.0 for k, v in timings.items()},
        **task,
    )


def _check_task_dim(model: torch.nn.Module, tokens: torch.Tensor, where: str) -> None:
    task_dim = int(model.hparams.task_dim)
    if tokens.shape[1] != task_dim:
        raise StoreError(f"{where}: features have dim {tokens.shape[1]}, the scorer was trained on task tokens "
                         f"of dim {task_dim}")


def default_checkpoint() -> Path:
    """``last.ckpt`` of the default ``python -m spider.fit`` run (its ``run_dir`` as composed now)."""
    from spider.config import compose

    return Path(compose().run_dir) / "checkpoints" / "last.ckpt"
