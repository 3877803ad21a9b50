"""``spider transfergraph``: fit TransferGraph on a built zoo, rank a folder of images with it.

Command line::

    spider transfergraph fit --zoo-dir ZOO --out model.pt [--dim 32] [--layers 2] [--topk 5] ...
    spider transfergraph rank --model model.pt --images DIR [--zoo-dir ZOO] [--json out.json] [--top N]

``fit`` reads the zoo's fine-tuning bank (pool tasks only), the bank tasks' general-encoder
tokens and PTM metadata, trains, and writes one file (``torch.load(weights_only=True)``).
``rank`` runs the zoo's general encoder on the images (as ``spider rank --images`` does), adds
the task as a new dataset node and ranks the PTMs by predicted accuracy. Bad input exits with
code 2 and a one-line message; nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from spider.errors import ConfigError, cli_main
from spider.rank import _check_options, print_ranking
from spider.rank_core import RankResult
from spider.rank_images import image_source, zoo_model_refs
from spider.transfergraph.model import HParams, TransferGraph, load
from spider.transfergraph.zoo import fit_zoo

__all__ = ["main", "rank_images"]


def rank_images(images: Union[str, os.PathLike], model: Union[str, os.PathLike, TransferGraph], *,
                zoo_dir: Union[str, os.PathLike, None] = None, data_dir: Union[str, os.PathLike, None] = None,
                batch_size: int = 128, device: str = "cpu", progress: bool = False) -> RankResult:
    """Rank every PTM of a fitted TransferGraph's zoo for the task given by an image folder.

    Args:
        images: one sub-folder of images per class (at least 2 classes).
        model: a file written by ``spider transfergraph fit`` or a loaded :class:`TransferGraph`.
        zoo_dir: the zoo whose general encoder makes the task tokens (default: the one it was fitted on).

    Returns:
        A :class:`~spider.rank_core.RankResult` (``scores``: predicted per-task z-scored accuracy;
        ``timings_ms``: ``check_images``, ``load``, ``extract_general``, ``score``, ``total``).
    """
    from spider.datamodules.tokens import class_centres
    from spider.pipeline.extract import extract

    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()
    source = image_source(images)  # bad folders fail before anything is loaded
    timings["check_images"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = model if isinstance(model, TransferGraph) else load(model)
    zoo_dir = zoo_dir or graph.info.get("zoo_dir")
    if not zoo_dir:
        raise ConfigError("TransferGraph model: records no zoo; pass --zoo-dir (the zoo whose general encoder "
                          "it was fitted with)")
    general_ref, _ = zoo_model_refs(zoo_dir)
    expected = graph.info.get("general_weights")
    if expected and general_ref.weights != expected:
        raise ConfigError(f"zoo {zoo_dir}: its general encoder ({general_ref.weights}) is not the one the model "
                          f"was fitted with ({expected}); refit with `spider transfergraph fit --zoo-dir {zoo_dir}`")
    timings["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = extract(general_ref.load(data_dir), source, batch_size=batch_size, device=device, progress=progress,
                       description=f"{general_ref.id} on {source.root.name}").features
    tokens = class_centres(features, source.labels, len(source.class_names)).float().cpu()
    timings["extract_general"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = graph.predict([tokens])[0]
    timings["score"] = time.perf_counter() - t0
    order = np.argsort(-scores, kind="stable")
    timings["total"] = time.perf_counter() - start
    return RankResult(models=[graph.models[m] for m in order], scores=[float(scores[m]) for m in order],
                      tokens=["general"] * len(order), general_scores=dict(zip(graph.models, map(float, scores))),
                      timings_ms={k: v * 1000.0 for k, v in timings.items()}, dataset=source.root.name,
                      split="images", num_classes=len(source.class_names), num_samples=len(source),
                      images=str(source.root), class_names=list(source.class_names))


def _fit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; expected a file path")
    if not Path(args.zoo_dir).is_dir():
        raise ConfigError(f"--zoo-dir: no folder {args.zoo_dir}")
    values = {f.name: getattr(args, f.name) for f in fields(HParams) if getattr(args, f.name, None) is not None}
    model = fit_zoo(args.zoo_dir, HParams.from_dict(values))
    try:
        model.save(out)
    except OSError as err:
        raise ConfigError(f"--out: cannot write {out} ({err.strerror or err})") from None
    print(f"TransferGraph on {model.num_tasks} pool tasks x {len(model.models)} PTMs, trained in "
          f"{model.info['train_seconds']:.1f} s: {out}")
    return 0


def _rank(args: argparse.Namespace) -> int:
    _check_options(args)
    if not Path(args.model).is_file():
        raise ConfigError(f"--model: no file {args.model} (write one with `spider transfergraph fit`)")
    progress = not args.no_progress and args.json != "-" and sys.stdout.isatty()
    result = rank_images(args.images, args.model, zoo_dir=args.zoo_dir, batch_size=args.batch_size,
                         device=args.device, progress=progress)
    print_ranking(result, args.json, args.top)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spider transfergraph", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train on a built zoo's fine-tuning bank")
    fit.add_argument("--zoo-dir", required=True, help="zoo build folder (with a fine-tuning bank)")
    fit.add_argument("--out", required=True, help="file to write the fitted model to")
    defaults = HParams()
    for f in fields(HParams):
        kind: Any = str if f.name == "predictor" else type(getattr(defaults, f.name))
        fit.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None,
                         help=f"default {getattr(defaults, f.name)}")
    rank = sub.add_parser("rank", help="rank the zoo's PTMs for a folder of images")
    rank.add_argument("--model", required=True, help="file written by `spider transfergraph fit`")
    rank.add_argument("--images", required=True, help="folder of the task's images, one sub-folder per class")
    rank.add_argument("--zoo-dir", default=None, help="zoo build folder (default: the model's)")
    rank.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    rank.add_argument("--top", type=int, default=None, help="show only the first N rows of the table")
    rank.add_argument("--json", default=None, help="write the result as JSON to this file ('-': stdout)")
    rank.add_argument("--device", default="cpu")
    rank.add_argument("--no-progress", action="store_true", help="no progress bar while extracting")
    for p in (fit, rank):
        p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0 = torch's default)")
    return parser


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return _fit(args) if args.command == "fit" else _rank(args)


if __name__ == "__main__":
    sys.exit(main())
