"""Rank the PTMs of a zoo for a new task with a trained scorer (Python API and CLI).

The task is either a folder of images (one sub-folder per class) or a (dataset, split) of a
feature store. Its task tokens are the class centres of the general encoder's features
(:func:`spider.datamodules.tokens.class_centres`, the same function training used): for images,
the general encoder of the zoo the checkpoint was trained on (``data.zoo``, recorded in the
checkpoint) is run on them first. With ``rerank_topk = k > 0`` and a
:class:`~spider.modules.ReRanker` checkpoint, the k best PTMs are re-scored from their own
features of the task (for images: those k PTMs are run on the images).

Command line::

    python -m spider.rank --images DIR [--checkpoint CKPT] [--rerank-topk 3] [--json out.json]
    python -m spider.rank --store STORE --dataset D [--split train] [--checkpoint CKPT] ...

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from spider.errors import ConfigError, SpiderError, StoreError
from spider.io import write_text_atomic

__all__ = ["RankResult", "default_checkpoint", "image_source", "main", "rank_images", "rank_task", "task_tokens",
           "zoo_model_refs"]


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


def _load_ranker(checkpoint: Union[str, os.PathLike, torch.nn.Module, Sequence[Union[str, os.PathLike]]],
                 device: str, rerank_topk: int) -> tuple[torch.nn.Module, dict[str, Any], list[str]]:
    """(scorer in eval mode on ``device``, its checkpoint info, PTM ids in model-index order);
    several checkpoints rank as one :class:`~spider.modules.ensemble.ScorerEnsemble`."""
    from spider.modules.ensemble import ScorerEnsemble
    from spider.modules.scorer_registry import load_scorer
    from spider.modules import ReRanker

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
    if rerank_topk > 0 and not isinstance(model, ReRanker):
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
            or an already loaded scorer (from :func:`spider.modules.load_scorer`).
        store: feature-store root or :class:`~spider.store.FeatureStore` holding the task's
            features under the general encoder (and under the PTMs, for re-ranking).
        general: id of the general encoder in the store (default: the one used in training).
        rerank_topk: re-score the k best PTMs with their specific tokens (needs a ReRanker).

    Returns:
        A :class:`RankResult`.
    """
    from spider.store import FeatureStore

    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()
    model, info, names = _load_ranker(checkpoint, device, rerank_topk)
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

    scored = _score(model, tokens, rerank_topk, specific_tokens, timings)
    timings["total"] = time.perf_counter() - start
    return _result(scored, names, timings, dataset=dataset, split=split, num_classes=int(tokens.shape[0]),
                   num_samples=int(labels.shape[0]))


# ------------------------------------------------------------------------------ image folders


def default_checkpoint() -> Path:
    """``last.ckpt`` of the default ``python -m spider.fit`` run (its ``run_dir`` as composed now)."""
    from spider.config import compose

    return Path(compose().run_dir) / "checkpoints" / "last.ckpt"


def image_source(images: Union[str, os.PathLike]):
    """The checked :class:`~spider.pipeline.extract.ImageFolderSource` of a task's image folder.

    Raises:
        ExtractError: the folder is missing, holds no images, holds images of a single class, or
            an image cannot be read (one line naming it). Every file's header is read here, so a
            broken image fails before any model runs.
    """
    from spider.pipeline.extract import ExtractError, ImageFolderSource

    source = ImageFolderSource(images)
    if len(source.class_names) < 2:
        raise ExtractError(f"image folder {source.root}: found images of one class only "
                           f"({source.class_names[0]!r}); a task needs at least 2 classes, one sub-folder each")
    source.check()
    return source


def zoo_model_refs(zoo_dir: Union[str, os.PathLike]) -> tuple[Any, dict[str, Any]]:
    """(general encoder, ``{PTM id: ModelRef}``) recorded by the zoo build in ``<zoo_dir>/zoo.json``."""
    import dataclasses

    from spider.pipeline.build_manifest import read_manifest
    from spider.pipeline.recipe import ModelRef

    manifest = read_manifest(zoo_dir)
    fields = {f.name for f in dataclasses.fields(ModelRef)}

    def ref(entry: dict[str, Any]) -> ModelRef:
        return ModelRef(**{k: v for k, v in entry.items() if k in fields})

    try:
        return ref(manifest["general"]), {entry["id"]: ref(entry) for entry in manifest["models"]}
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{Path(zoo_dir) / 'zoo.json'}: no valid 'general'/'models' entries ({err})") from None


def rank_images(
    images: Union[str, os.PathLike],
    checkpoint: Union[str, os.PathLike, torch.nn.Module, None] = None,
    *,
    rerank_topk: int = 0,
    zoo_dir: Union[str, os.PathLike, None] = None,
    data_dir: Union[str, os.PathLike, None] = None,
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = False,
) -> RankResult:
    """Rank every PTM of a trained scorer's zoo for the task given by an image folder.

    The general encoder of the zoo the checkpoint was trained on runs on every image; the class
    centres of its features are the task tokens. With ``rerank_topk = k``, the k best PTMs run on
    the images too and are re-scored from the class centres of their own features.

    Args:
        images: folder with one sub-folder of images per class (at least 2 classes).
        checkpoint: written by ``spider.fit`` with ``data.zoo`` set (default
            :func:`default_checkpoint`), or a loaded scorer.
        zoo_dir: the zoo's build folder (default: the one recorded in the checkpoint).
        data_dir: shared data folder with the real PTMs' weights (default ``SPIDER_DATA_DIR``).

    Returns:
        A :class:`RankResult` (``timings_ms``: ``imports`` (one-off per process),
        ``check_images`` (every file's header),
        ``load`` (checkpoint, zoo record), ``extract_general``, ``warmup``,
        ``score``, then with re-ranking ``extract_topk`` and ``rescore``; ``total``).
    """
    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()
    # One-off per process (torchvision, timm, lightning): timed apart from the stages proper.
    import timm  # noqa: F401
    import torchvision.datasets.folder  # noqa: F401

    import spider.train  # noqa: F401
    from spider.datamodules.tokens import class_centres
    from spider.pipeline.extract import extract

    timings["imports"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    source = image_source(images)  # bad folders fail before anything is loaded
    timings["check_images"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint = default_checkpoint() if checkpoint is None else checkpoint
    if not isinstance(checkpoint, torch.nn.Module) and not Path(checkpoint).is_file():
        raise ConfigError(f"checkpoint {checkpoint}: no such file (train one with `python -m spider.fit`, "
                          "or pass --checkpoint)")
    model, info, names = _load_ranker(checkpoint, device, rerank_topk)
    zoo = info.get("zoo") or {}
    zoo_dir = zoo_dir or zoo.get("dir")
    if not zoo_dir:
        raise ConfigError(f"checkpoint {checkpoint}: trained on a feature store without a zoo (data.zoo), so it "
                          "names no encoder to run on images; pass --zoo-dir, or rank a stored dataset with "
                          "--store/--dataset")
    general_ref, refs = zoo_model_refs(zoo_dir)
    missing = [n for n in names if n not in refs]
    if missing:
        raise ConfigError(f"zoo {zoo_dir}: no model entries for {', '.join(missing)} of the checkpoint "
                          "(another zoo than the one it was trained on?)")
    timings["load"] = time.perf_counter() - t0

    def centres_of(ref: Any) -> torch.Tensor:
        features = extract(ref.load(data_dir), source, batch_size=batch_size, device=device, progress=progress,
                           description=f"{ref.id} on {source.root.name}").features
        return class_centres(features, source.labels, len(source.class_names)).float()

    t0 = time.perf_counter()
    tokens = centres_of(general_ref)
    _check_task_dim(model, tokens, f"general encoder {general_ref.id} ({general_ref.model})")
    tokens = tokens.to(device)
    timings["extract_general"] = time.perf_counter() - t0

    scored = _score(model, tokens, rerank_topk, lambda m: centres_of(refs[names[m]]), timings)
    if "rerank" in timings:
        timings["extract_topk"] = scored.specific_seconds
        timings["rescore"] = timings.pop("rerank") - scored.specific_seconds
    timings["total"] = time.perf_counter() - start
    return _result(scored, names, timings, dataset=source.root.name, split="images",
                   num_classes=len(source.class_names), num_samples=len(source), images=str(source.root),
                   class_names=list(source.class_names))


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
    return buffer.getvalue() + f"time: {stages}\n"


def main(argv: Sequence[str] | None = None) -> int:
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
    try:
        _check_options(args)
        checkpoints = [Path(c) for c in args.checkpoint] if args.checkpoint else [default_checkpoint()]
        for path in checkpoints:
            if not path.is_file():
                raise ConfigError(f"--checkpoint: no file {path}" + (
                    "" if args.checkpoint else " (the default run's; train it with `python -m spider.fit`)"))
        checkpoint = checkpoints[0] if len(checkpoints) == 1 else checkpoints
        if args.images:
            progress = not args.no_progress and args.json != "-" and sys.stdout.isatty()
            result = rank_images(args.images, checkpoint, rerank_topk=args.rerank_topk, zoo_dir=args.zoo_dir,
                                 batch_size=args.batch_size, device=args.device, progress=progress)
        else:
            if not Path(args.store).is_dir():
                raise ConfigError(f"--store: no folder {args.store}")
            if not args.dataset:
                raise ConfigError("--dataset: required with --store (the task's dataset id in the store)")
            result = rank_task(checkpoint, args.store, args.dataset, split=args.split, general=args.general,
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
        try:
            write_text_atomic(args.json, text + "\n")
        except OSError as err:  # e.g. a read-only folder; the temp file is removed
            print(f"error: --json: cannot write {args.json} ({err.strerror or err})", file=sys.stderr)
            return 2
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
