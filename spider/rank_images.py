"""Rank a zoo's PTMs for a task given as a folder of images (one sub-folder per class): the
image-folder half of :mod:`spider.rank`, which re-exports these for its CLI and API."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from spider.errors import ConfigError
from spider.rank_core import (RankResult, _check_task_dim, _forward_weight, _load_ranker, _result, _score,
                              baseline_score, default_checkpoint, task_familiarity)

__all__ = ["image_source", "rank_images", "zoo_model_refs"]


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
    checkpoint: Union[str, os.PathLike, torch.nn.Module, Sequence[Union[str, os.PathLike]], None] = None,
    *,
    rerank_topk: int = 0,
    rerankers: Sequence[Union[str, os.PathLike, torch.nn.Module]] = (),
    rerank_weight: Optional[float] = None,
    rerank_baseline: Optional[str] = None,
    rank_prior_weight: Optional[float] = None,
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
    ``rerankers``, ``rerank_weight``, ``rerank_baseline`` and ``rank_prior_weight`` are those of
    :func:`spider.rank.rank_task` (a forward baseline scores the k PTMs' features of the images).

    Args:
        images: folder with one sub-folder of images per class (at least 2 classes).
        checkpoint: written by ``spider.fit`` with ``data.zoo`` set (default
            :func:`default_checkpoint`), several (an ensemble), or a loaded scorer.
        zoo_dir: the zoo's build folder (default: the one recorded in the checkpoint).
        data_dir: shared data folder with the real PTMs' weights (default ``SPIDER_DATA_DIR``).

    Returns:
        A :class:`RankResult` (``timings_ms``: ``imports`` (one-off per process),
        ``check_images`` (every file's header),
        ``load`` (checkpoint, zoo record), ``extract_general``, ``warmup``,
        ``score``, then with re-ranking ``extract_topk`` and ``rescore`` (by a forward baseline:
        ``forward_topk``, the k PTMs' extraction and scores); ``total``).
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
    for path in checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint]:
        if not isinstance(path, torch.nn.Module) and not Path(path).is_file():
            raise ConfigError(f"checkpoint {path}: no such file (train one with `python -m spider.fit`, "
                              "or pass --checkpoint)")
    model, info, names = _load_ranker(checkpoint, device, rerank_topk, rerankers, rerank_weight, rerank_baseline,
                                      rank_prior_weight)
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

    def extracted(ref: Any) -> Any:
        return extract(ref.load(data_dir), source, batch_size=batch_size, device=device, progress=progress,
                       description=f"{ref.id} on {source.root.name}")

    def centres_of(ref: Any) -> torch.Tensor:
        return class_centres(extracted(ref).features, source.labels, len(source.class_names)).float()

    def forward_score(m: int) -> float:
        out = extracted(refs[names[m]])
        return baseline_score(rerank_baseline, np.asarray(source.labels), out.features, out.logits)

    t0 = time.perf_counter()
    tokens = centres_of(general_ref)
    _check_task_dim(model, tokens, f"general encoder {general_ref.id} ({general_ref.model})")
    tokens = tokens.to(device)
    timings["extract_general"] = time.perf_counter() - t0

    familiarity = task_familiarity(model, info, tokens)
    forward = None if rerank_baseline is None else (forward_score, _forward_weight(rerank_weight, familiarity))
    scored = _score(model, tokens, rerank_topk, lambda m: centres_of(refs[names[m]]), timings, forward)
    if forward is not None and "rerank" in timings:  # the k PTMs' extraction and baseline scores
        timings["forward_topk"] = timings.pop("rerank")
    elif "rerank" in timings:
        timings["extract_topk"] = scored.specific_seconds
        timings["rescore"] = timings.pop("rerank") - scored.specific_seconds
    timings["total"] = time.perf_counter() - start
    return _result(scored, names, timings, familiarity, dataset=source.root.name, split="images",
                   num_classes=len(source.class_names), num_samples=len(source), images=str(source.root),
                   class_names=list(source.class_names))
