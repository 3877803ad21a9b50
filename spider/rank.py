"""Rank the PTMs of a zoo for a new task with a trained scorer (Python API and CLI).

The task is a (dataset, split) of a feature store: its task tokens are the class centres of the
general encoder's stored features (:func:`spider.datamodules.tokens.class_centres`, the same
function training used). With ``rerank_topk = k > 0`` and a :class:`~spider.modules.ReRanker`
checkpoint, the k best PTMs are re-scored from their own stored features of the task.

Command line::

    python -m spider.rank --checkpoint runs/x/checkpoints/last.ckpt --store STORE --dataset D \\
        [--split train] [--general general] [--rerank-topk 3] [--json out.json]

prints a table (rank, model, score, tokens used), the time of each stage, and writes the same as
JSON (``--json -`` prints the JSON instead of the table). Bad input exits with code 2 and a
one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from spider.errors import ConfigError, SpiderError, StoreError

__all__ = ["RankResult", "main", "rank_task", "task_tokens"]


@dataclass
class RankResult:
    """PTMs of one task, best first.

    Attributes:
        models: PTM ids, best first.
        scores: their scores (the specific score for re-scored PTMs, else the general score;
            the two kinds are not calibrated against each other, so the order is in ``models``).
        tokens: per PTM, ``"general"`` or ``"specific"`` (re-scored with its own features).
        general_scores: ``{model id: general score}`` for every PTM.
        timings_ms: wall time per stage in milliseconds: ``load`` (checkpoint), ``tokens``
            (reading features, class centres), ``warmup`` (the process's first forward, one-off
            costs), ``score`` (all PTMs, one batched forward), ``rerank`` (specific tokens of the
            top k and re-scoring), ``total``.
        dataset, split, num_classes, num_samples: the task.
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

    def to_dict(self) -> dict[str, Any]:
        return {
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


def _contiguous_labels(labels: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """Class ids remapped to 0..C-1 in sorted order of the stored ids: ([N] int64, C)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(f"{where}: labels: expected integer class ids [N] (regression tasks cannot be ranked "
                         f"from class centres), got {labels.dtype} {labels.shape}")
    classes, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), len(classes)


def task_tokens(store: Any, model: str, dataset: str, split: str = "train",
                labels: Optional[np.ndarray] = None) -> tuple[torch.Tensor, np.ndarray]:
    """Class centres of ``dataset/split`` under ``model``'s stored features.

    Args:
        store: a :class:`~spider.store.FeatureStore` (or its root).
        labels: [N] int64 contiguous class ids to use (the general encoder's, so that every
            encoder's centres come in the same class order); default: this entry's own labels.

    Returns:
        (centres [C, D] float32, labels [N] int64 contiguous class ids).
    """
    from spider.datamodules.tokens import class_centres
    from spider.store import FeatureStore

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    entry = store.entry(model, dataset, split)
    if labels is None:
        labels, num_classes = _contiguous_labels(entry.labels(), f"{model}/{dataset}/{split}")
    else:
        num_classes = int(labels.max()) + 1 if labels.size else 0
        if entry.num_samples != labels.shape[0]:
            raise StoreError(f"{model}/{dataset}/{split}: {entry.num_samples} rows but the general encoder's entry "
                             f"has {labels.shape[0]}; entries of one dataset must list the same samples")
    if num_classes < 1:
        raise StoreError(f"{model}/{dataset}/{split}: the entry has no samples")
    return class_centres(entry.features(), labels, num_classes).float(), labels


def rank_task(
    checkpoint: Union[str, os.PathLike, torch.nn.Module],
    store: Any,
    dataset: str,
    *,
    split: str = "train",
    general: Optional[str] = None,
    rerank_topk: int = 0,
    device: str = "cpu",
) -> RankResult:
    """Rank every PTM of a trained scorer's zoo for the task ``dataset/split`` of ``store``.

    Args:
        checkpoint: a checkpoint written by ``spider.fit`` (loaded with ``weights_only=True``)
            or an already loaded scorer (from :func:`spider.fit.load_scorer`).
        store: feature-store root or :class:`~spider.store.FeatureStore` holding the task's
            features under the general encoder (and under the PTMs, for re-ranking).
        general: id of the general encoder in the store (default: the one used in training).
        rerank_topk: re-score the k best PTMs with their specific tokens (needs a ReRanker).

    Returns:
        A :class:`RankResult`.
    """
    from spider.datamodules.tokens import pad_last_dim
    from spider.fit import load_scorer
    from spider.modules import ReRanker
    from spider.store import FeatureStore

    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_scorer(checkpoint, map_location=device)
    model = model.to(device).eval()
    info = getattr(model, "spider_info", None) or {}
    names = list(info.get("model_names") or model.hparams.get("model_names") or [])
    if len(names) != model.num_models:
        names = [f"model{m}" for m in range(model.num_models)]
    general = general or info.get("general") or "general"
    if rerank_topk < 0:
        raise ConfigError(f"rerank_topk: expected an integer >= 0, got {rerank_topk}")
    if rerank_topk > 0 and not isinstance(model, ReRanker):
        raise ConfigError(f"rerank_topk={rerank_topk}: the checkpoint holds a {type(model).__name__}, "
                          "re-ranking needs a ReRanker (model=reranker)")
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if not store.has(general, dataset, split):
        raise StoreError(f"store {store.root}: no entry {general}/{dataset}/{split} (general encoder features "
                         "of the task)")
    tokens, labels = task_tokens(store, general, dataset, split)
    task_dim = int(model.hparams.task_dim)
    if tokens.shape[1] != task_dim:
        raise StoreError(f"{general}/{dataset}/{split}: features have dim {tokens.shape[1]}, the scorer was "
                         f"trained on task tokens of dim {task_dim}")
    tokens = tokens.to(device)
    mask = torch.ones(tokens.shape[0], dtype=torch.bool, device=device)
    timings["tokens"] = time.perf_counter() - t0

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
    final_scores = general_scores
    rescored = torch.zeros_like(general_scores, dtype=torch.bool)
    if rerank_topk > 0:
        t0 = time.perf_counter()
        max_dim = int(model.max_model_dim)

        def specific_tokens(models: torch.Tensor) -> torch.Tensor:
            out = []
            for m in models.tolist():
                if not store.has(names[m], dataset, split):
                    raise StoreError(f"store {store.root}: no entry {names[m]}/{dataset}/{split} to re-rank "
                                     f"{names[m]} (drop --rerank-topk or store its features)")
                centres, _ = task_tokens(store, names[m], dataset, split, labels=labels)
                out.append(pad_last_dim(centres, max_dim))
            return torch.stack(out).to(device)

        result = model.rerank(tokens, mask, rerank_topk, specific_tokens)
        order, final_scores, rescored = result.order, result.scores, result.rescored
        timings["rerank"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start

    order_list = order.tolist()
    return RankResult(
        models=[names[m] for m in order_list],
        scores=[float(final_scores[m]) for m in order_list],
        tokens=["specific" if bool(rescored[m]) else "general" for m in order_list],
        general_scores={names[m]: float(general_scores[m]) for m in range(len(names))},
        timings_ms={k: v * 1000.0 for k, v in timings.items()},
        dataset=dataset,
        split=split,
        num_classes=int(tokens.shape[0]),
        num_samples=int(labels.shape[0]),
    )


def format_ranking(result: RankResult, top: Optional[int] = None) -> str:
    """The ranking as a text table plus one line of stage timings."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.dataset}/{result.split}: {result.num_classes} classes, "
                        f"{result.num_samples} samples")
    for name, justify in (("rank", "right"), ("model", "left"), ("score", "right"), ("tokens", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    rows = list(zip(result.models, result.scores, result.tokens))
    for i, (model, score, tokens) in enumerate(rows[:top] if top else rows):
        table.add_row(str(i + 1), model, f"{score:+.4f}" if math.isfinite(score) else "nan", tokens)
    buffer = StringIO()
    Console(file=buffer, width=120, force_terminal=False, color_system=None).print(table)
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())
    return buffer.getvalue() + f"time: {stages}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spider.rank", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by spider.fit (last.ckpt)")
    parser.add_argument("--store", required=True, help="feature-store folder holding the task")
    parser.add_argument("--dataset", required=True, help="dataset id of the task in the store")
    parser.add_argument("--split", default="train", help="stored split of the task (default: train)")
    parser.add_argument("--general", default=None, help="general encoder id (default: the checkpoint's)")
    parser.add_argument("--rerank-topk", type=int, default=0, help="re-score the k best PTMs (ReRanker)")
    parser.add_argument("--top", type=int, default=None, help="show only the first N rows of the table")
    parser.add_argument("--json", default=None, help="write the result as JSON to this file ('-': stdout)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: one task is too small to gain from more, and "
                             "on a busy machine extra threads wait on each other)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        if not Path(args.checkpoint).is_file():
            raise ConfigError(f"--checkpoint: no file {args.checkpoint}")
        if not Path(args.store).is_dir():
            raise ConfigError(f"--store: no folder {args.store}")
        result = rank_task(args.checkpoint, args.store, args.dataset, split=args.split, general=args.general,
                           rerank_topk=args.rerank_topk, device=args.device)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result.to_dict(), indent=2)
    if args.json == "-":
        print(text)
        return 0
    print(format_ranking(result, args.top), end="")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
