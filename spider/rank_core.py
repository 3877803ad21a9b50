"""The scoring core shared by :mod:`spider.rank` (stored tasks, CLI) and :mod:`spider.rank_images`
(image folders): loading a ranker checkpoint, scoring (and re-ranking) a task's tokens, and the
:class:`RankResult` both return.

A zoo of more than ``FAST_PATH_MIN_MODELS`` PTMs (hub scale, up to 10^6 and more) is ranked by
the two-stage search of :class:`~spider.modules.zoo_index.ZooIndex` (built once per loaded
scorer and kept with it): a pre-screen of every PTM, then exact scores of the ``pool`` best; the
ranking then lists those ``pool`` PTMs. Smaller zoos take the exact batched forward, as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from spider.errors import ConfigError, StoreError
from spider.familiarity import Familiarity, TaskReference
from spider.modules.zoo_index import IndexRanking, ZooIndex, supports

# Above this many PTMs the index's two-stage search ranks (exact forward: ~0.3 s at 5*10^4 on this
# repository's 2-core CPU; the search's cost hardly grows with M, the forward's grows linearly).
FAST_PATH_MIN_MODELS = 50_000


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
        num_models: PTMs in the zoo; more than ``len(models)`` when a hub-sized zoo was ranked
            by the two-stage search (``models`` then lists the PTMs it scored exactly, and
            ``general_scores`` only those).
        familiarity: the task against the ranker's training tasks
            (:meth:`spider.familiarity.Familiarity.as_dict`); None for a checkpoint without them.
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
    num_models: int = 0
    familiarity: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **({"num_models": self.num_models} if self.num_models > len(self.models) else {}),
            **({"familiarity": self.familiarity} if self.familiarity is not None else {}),
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


def load_ranker(checkpoint: Union[str, os.PathLike, torch.nn.Module, Sequence[Union[str, os.PathLike]]],
                rerankers: Sequence[Union[str, os.PathLike, torch.nn.Module]] = (), weight: float | None = None, *,
                device: str = "cpu", rank_prior_weight: float | None = None) -> torch.nn.Module:
    """The ranker of ``checkpoint`` (a path or a loaded scorer; several paths: one
    :class:`~spider.modules.ensemble.ScorerEnsemble`), in eval mode on ``device``. With
    ``rerankers`` (ReRanker checkpoints, e.g. a seed ensemble) it is the coarse ranker of a
    :class:`~spider.modules.ReRanking` whose top k they re-score (``weight``: their fusion weight,
    None = the first re-ranker's ``rerank_weight``). ``rank_prior_weight``: rank with this
    shrinkage towards the scorers' rank prior instead of their own (``TokenScorer.set_rank_prior_weight``);
    without it, the members of an ensemble rank with their ``ensemble_rank_prior_weight`` where
    they were trained with one (``data.ensemble_rank_prior_weight``)."""
    from spider.modules import ReRanker, ReRanking, TokenScorer
    from spider.modules.ensemble import ScorerEnsemble
    from spider.modules.scorer_registry import load_scorer

    def load(c: Any) -> torch.nn.Module:
        return c if isinstance(c, torch.nn.Module) else load_scorer(c, map_location=device)

    if isinstance(checkpoint, (list, tuple)):
        members = [load(c) for c in checkpoint]
        model = members[0] if len(members) == 1 else ScorerEnsemble(members)
        if len(members) > 1 and rank_prior_weight is None and (shared := _ensemble_weight(members)) is not None:
            for member in (m for m in members if hasattr(m, "rank_prior")):
                member.set_rank_prior_weight(shared)
    else:
        model = load(checkpoint)
    if rerankers:
        loaded = [load(r) for r in rerankers]
        for source, reranker in zip(rerankers, loaded):
            if not isinstance(reranker, ReRanker):
                raise ConfigError(f"reranker {source}: holds a {type(reranker).__name__}, expected a ReRanker "
                                  "(trained with model=reranker)")
        model = ReRanking(model, loaded, weight)
    if rank_prior_weight is not None:
        for scorer in model.modules():
            if isinstance(scorer, TokenScorer):
                scorer.set_rank_prior_weight(rank_prior_weight)
    return model.to(device).eval()


def _ensemble_weight(members: Sequence[torch.nn.Module]) -> float | None:
    """The one rank-prior weight a seed ensemble ranks with: its members' ``ensemble_rank_prior_weight``
    (None: trained without one, each member keeps its own ``rank_prior_weight``).

    Raises:
        ConfigError: members trained with different ensemble weights (say which to use instead).
    """
    own = {getattr(m, "hparams", {}).get("ensemble_rank_prior_weight") for m in members if hasattr(m, "rank_prior")}
    if len(own) > 1:
        raise ConfigError("checkpoint: the ensemble's members were trained with different "
                          f"data.ensemble_rank_prior_weight ({', '.join(sorted(map(str, own)))}); "
                          "pass one rank_prior_weight (--rank-prior-weight) to rank them with")
    return next(iter(own), None)


def _load_ranker(checkpoint: Union[str, os.PathLike, torch.nn.Module, Sequence[Union[str, os.PathLike]]],
                 device: str, rerank_topk: int, rerankers: Sequence[Union[str, os.PathLike, torch.nn.Module]] = (),
                 weight: float | None = None, baseline: str | None = None, rank_prior_weight: float | None = None
                 ) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    """(:func:`load_ranker`'s ranker, its checkpoint info, PTM ids in model-index order);
    ``baseline``: the top k are re-ordered by that forward baseline instead of a ReRanker."""
    from spider.modules import ReRanker, ReRanking

    if rerank_topk < 0:
        raise ConfigError(f"rerank_topk: expected an integer >= 0, got {rerank_topk}")
    if baseline is not None:
        from spider.baselines import get_baseline

        get_baseline(baseline)  # an unknown name fails before anything is loaded
        if rerank_topk < 1:
            raise ConfigError(f"rerank_baseline={baseline}: re-orders the top k of the ranking; pass rerank_topk "
                              ">= 1 (the number of PTMs to run on the task)")
        if rerankers:
            raise ConfigError("rerank_baseline and rerankers: the top k are re-ranked by one or the other")
        if weight is not None and not 0.0 <= weight <= 1.0:
            raise ConfigError(f"rerank_weight: expected a number in [0, 1], got {weight}")
    if isinstance(checkpoint, (list, tuple)) and len(checkpoint) > 1 and rerank_topk > 0 and not rerankers \
            and baseline is None:
        raise ConfigError("--rerank-topk: re-ranking takes one checkpoint, not an ensemble (or re-rankers to "
                          "re-score the ensemble's top k: --reranker)")
    model = load_ranker(checkpoint, rerankers, None if baseline else weight, device=device,
                        rank_prior_weight=rank_prior_weight)
    info = getattr(model, "spider_info", None) or {}
    names = list(info.get("model_names") or model.hparams.get("model_names") or [])
    if len(names) != model.num_models:
        names = [f"model{m}" for m in range(model.num_models)]
    if rerank_topk > 0 and baseline is None and not isinstance(model, (ReRanker, ReRanking)):
        raise ConfigError(f"rerank_topk={rerank_topk}: the checkpoint holds a {type(model).__name__}, "
                          "re-ranking needs a ReRanker (model=reranker)")
    return model, info, names


def zoo_index(model: torch.nn.Module) -> ZooIndex:
    """The :class:`ZooIndex` of ``model``, built on first use and kept on the module while its
    weights (every parameter and buffer, by storage and in-place version) and its rank-prior weight
    stay the same."""
    key = (model.training, getattr(model, "rank_prior_weight", None),
           *((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers())))
    cached = getattr(model, "_spider_zoo_index", None)
    if cached is None or cached[0] != key:
        cached = (key, ZooIndex(model))
        model._spider_zoo_index = cached
    return cached[1]


def uses_index(model: torch.nn.Module) -> bool:
    """Whether :func:`score_general` ranks ``model``'s zoo with the two-stage search."""
    return supports(model) and model.num_models > FAST_PATH_MIN_MODELS


def score_general(model: torch.nn.Module, task_tokens: torch.Tensor, task_mask: torch.Tensor, *,
                  index: ZooIndex | None = None) -> IndexRanking:
    """General scores of ONE task ([1, C, Dg], [1, C]), best first (ties: lower model index first).

    Up to ``FAST_PATH_MIN_MODELS`` PTMs (or a scorer the index cannot reproduce): the exact
    batched forward, every PTM ranked. Above: ``index`` (default :func:`zoo_index`) ranks its
    ``pool`` best PTMs by the pre-screen, scored exactly.
    """
    if index is None and uses_index(model):
        index = zoo_index(model)
    if index is not None:
        return index.rank(task_tokens, task_mask)
    with torch.no_grad():
        scores = model(task_tokens, task_mask)[0]
    order = torch.argsort(scores, descending=True, stable=True)
    return IndexRanking(models=order, scores=scores[order])


@dataclass
class _Scored:
    order: torch.Tensor  # int64 [M] model indices, best first (the pool only for a hub-sized zoo)
    scores: torch.Tensor  # [M] final scores (specific for re-scored models)
    general: torch.Tensor  # [M] general scores (NaN for PTMs the two-stage search left out)
    rescored: torch.Tensor  # bool [M]
    specific_seconds: float = 0.0  # time spent computing specific tokens (inside re-ranking)


def _score(model: torch.nn.Module, tokens: torch.Tensor, rerank_topk: int,
           specific_tokens: Callable[[int], torch.Tensor], timings: dict[str, float],
           forward: tuple[Callable[[int], float], float] | None = None) -> _Scored:
    """Score every PTM from ``tokens`` [C, Dg]; re-score the top k from ``specific_tokens(m)``
    ([C, D_m] class centres under PTM m), or with ``forward = (score, weight)`` re-order them by
    :func:`spider.modules.forward_rerank` with a forward baseline's ``score(m)`` of PTM m. Adds
    ``warmup``, ``score`` and ``rerank`` to ``timings`` (and ``index``, the one-off index build,
    for a hub-sized zoo)."""
    from spider.datamodules.tokens import pad_last_dim

    mask = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    index = None
    if uses_index(model):
        t0 = time.perf_counter()
        index = zoo_index(model)
        timings["index"] = time.perf_counter() - t0
    # The first forward of a process pays one-off costs (lazy initialisation, kernel
    # selection: ~100x a steady-state call on CPU); time it apart from the scoring itself.
    t0 = time.perf_counter()
    score_general(model, tokens[None], mask[None], index=index)
    timings["warmup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranking = score_general(model, tokens[None], mask[None], index=index)
    timings["score"] = time.perf_counter() - t0
    general_scores = torch.full((model.num_models,), float("nan"), device=ranking.scores.device)
    general_scores[ranking.models] = ranking.scores
    order = ranking.models
    scored = _Scored(order, general_scores, general_scores, torch.zeros_like(general_scores, dtype=torch.bool))
    if rerank_topk > 0 and forward is not None:
        from spider.modules import forward_rerank

        t0 = time.perf_counter()
        score_of, weight = forward
        result = forward_rerank(general_scores[None], rerank_topk,
                                lambda top: torch.tensor([[score_of(m) for m in top[0].tolist()]]), weight)
        scored.order, scored.scores, scored.rescored = result.order[0], result.scores[0], result.rescored[0]
        timings["rerank"] = time.perf_counter() - t0
    elif rerank_topk > 0:
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


def task_familiarity(model: torch.nn.Module, info: Mapping[str, Any], tokens: torch.Tensor) -> Familiarity | None:
    """The task's class centres ``tokens`` [C, Dg] against the training tasks stored in ``model``'s
    checkpoint ``info`` (None for a checkpoint written before they were stored). The reference is
    built once per loaded model and kept on it: rebuilding it costs 13x the comparison (zoo40)."""
    stored = info.get("reference")
    if stored is None:
        return None
    cached = getattr(model, "_spider_task_reference", None)
    if cached is None or cached[0] is not stored:
        cached = (stored, TaskReference.from_dict(stored, "checkpoint entry 'reference'"))
        model._spider_task_reference = cached
    return cached[1].familiarity(tokens)


def _forward_weight(weight: float | None, familiarity: Familiarity | None = None) -> float:
    """The forward baseline's fusion weight: ``weight`` (default FORWARD_RERANK_WEIGHT), or
    NOVEL_RERANK_WEIGHT for a task unlike every training task of the ranker."""
    from spider.modules import FORWARD_RERANK_WEIGHT, NOVEL_RERANK_WEIGHT

    if familiarity is not None and familiarity.novel:
        return NOVEL_RERANK_WEIGHT
    return FORWARD_RERANK_WEIGHT if weight is None else float(weight)


def baseline_score(name: str, labels: np.ndarray, features: Any, source_logits: Any = None) -> float:
    """Forward baseline ``name`` of one PTM on a task (NaN, with a warning, where it fails)."""
    from spider.baselines import score_models

    arrays = {"features": np.asarray(features, dtype=np.float32)}
    if source_logits is not None:
        arrays["source_logits"] = np.asarray(source_logits, dtype=np.float32)
    return float(score_models(labels, {"ptm": arrays}, [name])[0, 0])


def _result(scored: _Scored, names: list[str], timings: dict[str, float], familiarity: Familiarity | None = None,
            **task: Any) -> RankResult:
    order = scored.order.tolist()
    listed = range(len(names)) if len(order) == len(names) else order
    return RankResult(
        models=[names[m] for m in order],
        scores=[float(scored.scores[m]) for m in order],
        tokens=["specific" if bool(scored.rescored[m]) else "general" for m in order],
        general_scores={names[m]: float(scored.general[m]) for m in listed},
        timings_ms={k: v * 1000.0 for k, v in timings.items()},
        num_models=len(names),
        familiarity=None if familiarity is None else familiarity.as_dict(),
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
