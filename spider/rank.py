"""Rank the PTMs of a zoo for a new task with a trained scorer (Python API and CLI).

The task is either a folder of images (one sub-folder per class) or a (dataset, split) of a
feature store. Its task tokens are the class centres of the general encoder's features
(:func:`spider.datamodules.tokens.class_centres`, the same function training used): for images,
the general encoder of the zoo the checkpoint was trained on (``data.zoo``, recorded in the
checkpoint) is run on them first. With ``rerank_topk = k > 0`` and a
:class:`~spider.modules.ReRanker` checkpoint (or ``rerankers``: ReRanker checkpoints that re-score
the top k of any ranker, e.g. a seed ensemble), the k best PTMs are re-scored from their own
features of the task (for images: those k PTMs are run on the images). With ``rerank_baseline``
(a registered forward baseline, any checkpoint) those k are re-ordered by a fusion of the ranking
with the baseline's scores of their features (:func:`spider.modules.forward_rerank`).

Command line::

    python -m spider.rank --images DIR [--checkpoint CKPT] [--rerank-topk 3] [--json out.json]
    python -m spider.rank --store STORE --dataset D [--split train] [--checkpoint CKPT] ...
    python -m spider.rank ... --checkpoint S0 S1 S2 --reranker R0 --reranker R1 --rerank-topk 3 [--rerank-weight W]
    python -m spider.rank ... --rerank-baseline logme --rerank-topk 10 [--rerank-weight W]

``--checkpoint`` defaults to ``last.ckpt`` of the default ``python -m spider.fit`` run. Prints a
table (rank, model, score, tokens used), the time of each stage, and writes the same as JSON
(``--json -`` prints the JSON instead of the table). Bad input (a missing or empty folder, a
single class, an unreadable image, ...) exits with code 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from spider.errors import ConfigError, StoreError, cli_main
from spider.io import write_text_atomic
from spider.rank_core import (RankResult, _check_task_dim, _forward_weight, _load_ranker, _result, _score,
                              baseline_score, default_checkpoint, task_familiarity)
from spider.rank_images import image_source, rank_images, zoo_model_refs

__all__ = ["RankResult", "default_checkpoint", "image_source", "main", "print_ranking", "rank_images", "rank_task",
           "task_tokens", "zoo_model_refs"]


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
    rerankers: Sequence[Union[str, os.PathLike, torch.nn.Module]] = (),
    rerank_weight: Optional[float] = None,
    rerank_baseline: Optional[str] = None,
    rank_prior_weight: Optional[float] = None,
    device: str = "cpu",
) -> RankResult:
    """Rank every PTM of a trained scorer's zoo for the task ``dataset/split`` of ``store``.

    Args:
        checkpoint: a checkpoint written by ``spider.fit`` (loaded with ``weights_only=True``),
            several (one ensemble of standardised scores) or an already loaded scorer (from
            :func:`spider.modules.load_scorer`).
        store: feature-store root or :class:`~spider.store.FeatureStore` holding the task's
            features under the general encoder (and under the PTMs, for re-ranking).
        general: id of the general encoder in the store (default: the one used in training).
        rerank_topk: re-score the k best PTMs with their specific tokens (needs a ReRanker
            checkpoint or ``rerankers``).
        rerankers, rerank_weight: ReRanker checkpoints that re-score the top k and their fusion
            weight (:func:`spider.rank_core.load_ranker`).
        rerank_baseline: a registered forward baseline (e.g. ``logme``) that scores the top k from
            their stored features instead, fused with weight ``rerank_weight`` (default
            :data:`spider.modules.FORWARD_RERANK_WEIGHT`; :func:`spider.modules.forward_rerank`).
        rank_prior_weight: shrink the ranking towards the scorer's rank prior with this weight
            in [0, 1) instead of its trained one (``data.rank_prior_weight``, or for a seed
            ensemble ``data.ensemble_rank_prior_weight`` where set).

    Returns:
        A :class:`RankResult`.
    """
    from spider.store import FeatureStore

    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()
    model, info, names = _load_ranker(checkpoint, device, rerank_topk, rerankers, rerank_weight, rerank_baseline,
                                      rank_prior_weight)
    general = general or info.get("general") or "general"
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if not store.has(general, dataset, split):
        raise StoreError(f"store {store.root}: no entry {general}/{dataset}/{split} (general encoder features "
                         "of the task)")
    tokens, labels = task_tokens(store, general, dataset, split)
    _check_task_dim(model, tokens, f"{general}/{dataset}/{split}")
    tokens = tokens.to(device)
    timings["tokens"] = time.perf_counter() - t0

    def specific_tokens(m: int) -> torch.Tensor:
        if not store.has(names[m], dataset, split):
            raise StoreError(f"store {store.root}: no entry {names[m]}/{dataset}/{split} to re-rank "
                             f"{names[m]} (drop --rerank-topk or store its features)")
        return task_tokens(store, names[m], dataset, split, labels=labels)[0]

    def forward_score(m: int) -> float:
        if not store.has(names[m], dataset, split):
            raise StoreError(f"store {store.root}: no entry {names[m]}/{dataset}/{split} to re-rank "
                             f"{names[m]} (drop --rerank-topk or store its features)")
        entry = store.entry(names[m], dataset, split)
        return baseline_score(rerank_baseline, labels, entry.features(), entry.logits() if entry.has_logits else None)

    familiarity = task_familiarity(model, info, tokens)
    forward = None if rerank_baseline is None else (forward_score, _forward_weight(rerank_weight, familiarity))
    scored = _score(model, tokens, rerank_topk, specific_tokens, timings, forward)
    timings["total"] = time.perf_counter() - start
    return _result(scored, names, timings, familiarity, dataset=dataset, split=split,
                   num_classes=int(tokens.shape[0]), num_samples=int(labels.shape[0]))


# ------------------------------------------------------------------------------ image folders


def format_ranking(result: RankResult, top: Optional[int] = None) -> str:
    """The ranking as a text table plus one line of stage timings."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    task = result.images or f"{result.dataset}/{result.split}"
    table = Table(title=f"{task}: {result.num_classes} classes, {result.num_samples} samples")
    for name, justify in (("rank", "right"), ("model", "left"), ("score", "right"), ("tokens", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    rows = list(zip(result.models, result.scores, result.tokens))
    for i, (model, score, tokens) in enumerate(rows[:top] if top else rows):
        table.add_row(str(i + 1), model, f"{score:+.4f}" if math.isfinite(score) else "nan", tokens)
    buffer = StringIO()
    Console(file=buffer, width=120, force_terminal=False, color_system=None).print(table)
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())
    known = result.familiarity
    familiar = "" if known is None else (
        f"familiarity: similarity {known['similarity']:.3f} to the nearest training task "
        f"({'novel' if known['novel'] else 'familiar'}: novel at or below "
        f"{'n/a (one pool dataset)' if known['threshold'] is None else format(known['threshold'], '.3f')})\n")
    return buffer.getvalue() + familiar + f"time: {stages}\n"


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    from spider.modules import FORWARD_RERANK_WEIGHT

    parser = argparse.ArgumentParser(prog="python -m spider.rank", description=__doc__.split("\n\n")[0])
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--images", help="folder of the task's images, one sub-folder per class")
    task.add_argument("--store", help="feature-store folder holding the task (with --dataset)")
    parser.add_argument("--checkpoint", default=None, nargs="+",
                        help="checkpoint written by spider.fit (default: last.ckpt of the default fit run); "
                             "several (e.g. seeds of one setting) rank as an ensemble of standardised scores")
    parser.add_argument("--dataset", default=None, help="dataset id of the task in the store")
    parser.add_argument("--split", default="train", help="stored split of the task (default: train)")
    parser.add_argument("--general", default=None, help="general encoder id in the store (default: the checkpoint's)")
    parser.add_argument("--zoo-dir", default=None, help="zoo build folder (default: the checkpoint's; --images)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass (--images)")
    parser.add_argument("--rerank-topk", type=int, default=0, help="re-score the k best PTMs (ReRanker)")
    parser.add_argument("--reranker", action="append", default=[],
                        help="ReRanker checkpoint that re-scores the top k of --checkpoint's ranking (e.g. of a seed "
                             "ensemble); repeat for a seed ensemble of re-rankers; needs --rerank-topk")
    parser.add_argument("--rerank-baseline", default=None, metavar="BASELINE",
                        help="re-order the top k (--rerank-topk) by a fusion with this forward baseline's scores of "
                             "their features (e.g. logme, gbc; `spider baselines --list`), instead of a ReRanker; "
                             "k = the number of PTMs run on the task")
    parser.add_argument("--rerank-weight", type=float, default=None,
                        help="fusion weight in [0, 1] of --reranker's specific scores (default: the first "
                             "re-ranker's model.rerank_weight) or of --rerank-baseline's scores (default "
                             f"{FORWARD_RERANK_WEIGHT:g})")
    parser.add_argument("--rank-prior-weight", type=float, default=None, metavar="W",
                        help="shrink the ranking towards the scorer's rank prior (data.rank_prior) with weight W in "
                             "[0, 1) instead of the trained data.rank_prior_weight (for several --checkpoint: "
                             "data.ensemble_rank_prior_weight, where set)")
    parser.add_argument("--top", type=int, default=None, help="show only the first N rows of the table")
    parser.add_argument("--json", default=None, help="write the result as JSON to this file ('-': stdout)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars while extracting")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: a task's tokens are too small to gain from more, "
                             "and the zoo's small models on a few hundred images barely do; on a busy machine "
                             "extra threads wait on each other; 0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    _check_options(args)
    _check_reranking(args)
    checkpoints = [Path(c) for c in args.checkpoint] if args.checkpoint else [default_checkpoint()]
    for path in checkpoints:
        if not path.is_file():
            raise ConfigError(f"--checkpoint: no file {path}" + (
                "" if args.checkpoint else " (the default run's; train it with `python -m spider.fit`)"))
    for path in args.reranker:
        if not Path(path).is_file():
            raise ConfigError(f"--reranker: no file {path}")
    checkpoint = checkpoints[0] if len(checkpoints) == 1 else checkpoints
    reranking = {"rerank_topk": args.rerank_topk, "rerankers": args.reranker, "rerank_weight": args.rerank_weight,
                 "rerank_baseline": args.rerank_baseline, "rank_prior_weight": args.rank_prior_weight}
    if args.images:
        progress = not args.no_progress and args.json != "-" and sys.stdout.isatty()
        result = rank_images(args.images, checkpoint, zoo_dir=args.zoo_dir, batch_size=args.batch_size,
                             device=args.device, progress=progress, **reranking)
    else:
        if not Path(args.store).is_dir():
            raise ConfigError(f"--store: no folder {args.store}")
        if not args.dataset:
            raise ConfigError("--dataset: required with --store (the task's dataset id in the store)")
        result = rank_task(checkpoint, args.store, args.dataset, split=args.split, general=args.general,
                           device=args.device, **reranking)
    print_ranking(result, args.json, args.top)
    return 0


def print_ranking(result: RankResult, json_out: Optional[str], top: Optional[int] = None) -> None:
    """What a ranking CLI prints: the JSON (``json_out == "-"``), or the table (``top`` rows) and,
    with a ``json_out`` file, the JSON written there atomically."""
    text = json.dumps(result.to_dict(), indent=2)
    if result.familiarity is not None and result.familiarity["novel"]:
        print(f"warning: the task is unlike every training task of this ranker (similarity "
              f"{result.familiarity['similarity']:.3f}, novel at or below {result.familiarity['threshold']:.3f}): "
              "its general-token ranking is weak evidence; run PTMs on it (--rerank-baseline B --rerank-topk k "
              "orders them by the baseline alone)", file=sys.stderr)
    if json_out == "-":
        print(text)
        return
    print(format_ranking(result, top), end="")
    if json_out:
        try:
            write_text_atomic(json_out, text + "\n")
        except OSError as err:  # e.g. a read-only folder; the temp file is removed
            raise ConfigError(f"--json: cannot write {json_out} ({err.strerror or err})") from None


def _check_options(args: argparse.Namespace) -> None:
    """Options checked before anything is loaded, so the error names the option, not the checkpoint."""
    from spider.baselines._inputs import checked_device

    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top: expected a positive integer, got {args.top}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if args.json and args.json != "-":
        path = Path(args.json)
        if path.is_dir():
            raise ConfigError(f"--json: {path} is a folder; expected a file path (or '-' for stdout)")
        if path.parent.exists() and not path.parent.is_dir():
            raise ConfigError(f"--json: {path.parent} is not a folder")
    checked_device(args.device, "--device")


def _check_reranking(args: argparse.Namespace) -> None:
    """The re-ranking options of ``spider rank`` (``_check_options`` serves other ranking CLIs too)."""
    if args.reranker and args.rerank_topk < 1:
        raise ConfigError("--reranker: re-scores the top k of the ranking; pass --rerank-topk k (k >= 1)")
    if args.rerank_baseline is not None:
        from spider.baselines import get_baseline

        get_baseline(args.rerank_baseline)  # names the unknown baseline and the known ones
        if args.rerank_topk < 1:
            raise ConfigError("--rerank-baseline: re-orders the top k of the ranking; pass --rerank-topk k (k >= 1)")
        if args.reranker:
            raise ConfigError("--rerank-baseline and --reranker: the top k are re-ranked by one or the other")
    if args.rerank_weight is not None:
        if not args.reranker and args.rerank_baseline is None:
            raise ConfigError("--rerank-weight: the fusion weight of --reranker or --rerank-baseline; pass one (a "
                              "ReRanker --checkpoint fuses with its own model.rerank_weight)")
        if not 0.0 <= args.rerank_weight <= 1.0:
            raise ConfigError(f"--rerank-weight: expected a number in [0, 1], got {args.rerank_weight}")
    if args.rank_prior_weight is not None and not 0.0 <= args.rank_prior_weight < 1.0:
        raise ConfigError(f"--rank-prior-weight: expected a number in [0, 1), got {args.rank_prior_weight}")


if __name__ == "__main__":
    sys.exit(main())
