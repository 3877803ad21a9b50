"""``spider model-score`` / ``python -m spider.model_score``: rank PTMs on a task with a score that
needs the model itself, not only stored features (``lgc``: per-sample gradients).

Usage::

    python -m spider.model_score --zoo-dir artifacts/minizoo --target usps      # every PTM of a built zoo
    python -m spider.model_score --zoo-dir artifacts/minizoo --images my_photos/ [--ptm ID ...]
    python -m spider.model_score --model resnet10t --checkpoint r10.pth --arrays task.npz
    python -m spider.model_score --list

``--target`` is a target of the zoo's recipe (its labelled train images, as in the store);
``--images`` is a folder with one sub-folder per class, ``--arrays`` an ``.npz`` with ``x``/``y``.
Images are preprocessed for each PTM exactly as feature extraction does
(:func:`spider.pipeline.extract.preprocess`). Options: ``--score lgc``, ``--device cpu|cuda[:N]``,
``--max-params``, ``--batch-size``, ``--seed``, ``--json OUT|-`` (``-`` prints JSON instead of the
table; a file is written atomically). A PTM the score fails on gets an empty cell and a
``warning:`` line; bad input prints one ``error:`` line and exits with 2.

Python: :func:`score_prepared` scores one loaded PTM
(``score_prepared("lgc", load_model("mnist_cnn"), images, labels)``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spider.errors import ArgumentParser, SpiderError, UsageError, cli_main

__all__ = ["main", "score_prepared"]

PROG = "python -m spider.model_score"


def score_prepared(name: str, prepared: Any, images: Any, labels: Any, *, device: Any = None, **options: Any) -> float:
    """Model score ``name`` of a loaded PTM (:class:`~spider.pipeline.extract.PreparedModel`) on raw
    images (uint8 or [0, 1] float ``[N, H, W(, C)]``, or a list of such images) with ``labels`` [N]."""
    from spider.baselines import get_model_score
    from spider.pipeline.extract import preprocess

    score = get_model_score(name)
    x = preprocess(images, prepared)
    return score(module=prepared.module, forward=lambda batch: prepared.run(batch)[0], images=x, labels=labels,
                 device=device, **options)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Rank PTMs on a task with a score that needs the model (LGC).")
    p.add_argument("--score", default="lgc", help="model score (default: lgc; --list shows them)")
    p.add_argument("--zoo-dir", type=Path, help="built zoo: score every PTM of it (or those given by --ptm)")
    p.add_argument("--ptm", action="append", default=None, metavar="ID", help="with --zoo-dir: this PTM only (repeatable)")
    p.add_argument("--model", help="without --zoo-dir: a zoo model name or timm architecture")
    p.add_argument("--checkpoint", help="weights of --model (required for timm architectures)")
    p.add_argument("--target", help="with --zoo-dir: a target of its recipe (its labelled train images)")
    p.add_argument("--images", help="image folder, one sub-folder per class")
    p.add_argument("--arrays", help=".npz file with x (images) and y (labels)")
    p.add_argument("--data-dir", help="shared data folder for zoo models and targets (default SPIDER_DATA_DIR)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--max-params", type=int, default=None, help="lgc: parameter budget (default 131072)")
    p.add_argument("--batch-size", type=int, default=None, help="lgc: images per vmap chunk (default 32)")
    p.add_argument("--seed", type=int, default=None, help="lgc: seed of the random output direction (default 0)")
    p.add_argument("--json", metavar="OUT", help="write results as JSON to OUT ('-' prints JSON instead of the table)")
    p.add_argument("--list", action="store_true", help="list the registered model scores and exit")
    return p


def _models(args: argparse.Namespace) -> dict[str, Any]:
    """``{id: loader}``: the zoo's PTMs (recipe refs, checkpoints under the zoo folder) or one --model."""
    from spider.pipeline.extract import ExtractError, load_model, model_kind

    if args.zoo_dir is None:
        if args.model is None:
            raise UsageError("give --zoo-dir (its PTMs) or --model (one model)")
        if args.ptm:
            raise UsageError("--ptm selects PTMs of --zoo-dir; with --model give one model only")
        if args.checkpoint is None and model_kind(args.model) == "timm":
            raise ExtractError(f"--checkpoint is required for timm model {args.model!r} (weights are never downloaded)")
        return {args.model: lambda: load_model(args.model, checkpoint=args.checkpoint, data_dir=args.data_dir)}
    if args.model is not None or args.checkpoint is not None:
        raise UsageError("--model/--checkpoint and --zoo-dir exclude each other")
    from spider.pipeline.build_manifest import read_manifest
    from spider.pipeline.recipes import get_recipe

    if not args.zoo_dir.is_dir():
        raise UsageError(f"--zoo-dir: no such directory {args.zoo_dir}")
    recipe = get_recipe(read_manifest(args.zoo_dir)["recipe"])
    refs = {r.id: r for r in recipe.ptm_refs(args.zoo_dir / "checkpoints")}
    chosen = args.ptm or list(refs)
    unknown = [m for m in chosen if m not in refs]
    if unknown:
        raise UsageError(f"--ptm: {unknown[0]!r} is not a PTM of {args.zoo_dir} (PTMs: {', '.join(refs)})")
    return {m: (lambda ref=refs[m]: ref.load(args.data_dir)) for m in dict.fromkeys(chosen)}


def _data(args: argparse.Namespace) -> tuple[Any, np.ndarray, str]:
    """``(images, labels, description)`` of the task."""
    from spider.pipeline.extract import ArraySource, ImageFolderSource

    given = [k for k in ("target", "images", "arrays") if getattr(args, k) is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --target, --images, --arrays")
    if args.target is not None:
        if args.zoo_dir is None:
            raise UsageError("--target names a target of --zoo-dir's recipe; give --zoo-dir")
        from spider.pipeline.build_manifest import read_manifest
        from spider.pipeline.recipes import get_recipe

        targets = {t.id: t for t in get_recipe(read_manifest(args.zoo_dir)["recipe"]).all_targets}
        if args.target not in targets:
            raise UsageError(f"--target: {args.target!r} is not a target of {args.zoo_dir} (targets: {', '.join(targets)})")
        source = targets[args.target].load(args.data_dir)["train"].source()
    elif args.images is not None:
        source = ImageFolderSource(args.images)
        source.check()
    else:
        source = ArraySource.from_npz(args.arrays)
    return source.read(0, len(source)), source.labels, source.description


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score every model; returns the JSON-ready result."""
    from spider.baselines import get_model_score
    from spider.baselines._inputs import checked_device

    get_model_score(args.score)  # RegistryError lists the available ones
    device = None if args.device is None else checked_device(args.device, "--device")
    options = {k: getattr(args, k) for k in ("max_params", "batch_size", "seed") if getattr(args, k) is not None}
    models = _models(args)
    images, labels, description = _data(args)
    scores: dict[str, float | None] = {}
    seconds: dict[str, float] = {}
    for model, load in models.items():
        prepared = load()
        start = time.perf_counter()
        try:
            scores[model] = score_prepared(args.score, prepared, images, labels, device=device, **options)
        except SpiderError as err:
            if len(models) == 1:
                raise
            print(f"warning: {args.score} on {model}: {err}", file=sys.stderr)
            scores[model] = None
        seconds[model] = time.perf_counter() - start
    ranking = sorted((m for m in scores if scores[m] is not None), key=lambda m: -scores[m])
    return {"score": args.score, "data": description, "num_samples": int(len(labels)),
            "num_classes": int(np.unique(labels).size), "options": options, "models": list(models),
            "scores": scores, "seconds": seconds, "ranking": ranking}


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['score']} on {result['data']}: N={result['num_samples']}, C={result['num_classes']}")
    for column, justify in (("rank", "right"), ("model", "left"), (result["score"], "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    failed = [m for m in result["models"] if result["scores"][m] is None]
    for rank, model in enumerate([*result["ranking"], *failed], start=1):
        value = result["scores"][model]
        table.add_row(str(rank) if value is not None else "", model, "" if value is None else f"{value:.6g}",
                      f"{result['seconds'][model]:.2f}")
    Console(width=max(100, Console().width)).print(table)


@cli_main(OSError)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.list:
        from spider.baselines import get_model_score, list_model_scores

        for name in list_model_scores():
            print(f"{name}: {get_model_score(name).doc}")
        return 0
    if args.json is not None and args.json != "-" and not Path(args.json).parent.is_dir():
        raise UsageError(f"--json: directory {Path(args.json).parent} does not exist")
    result = run(args)
    if args.json == "-":
        sys.stdout.write(json.dumps(result, indent=2, default=lambda v: None) + "\n")
        return 0
    if args.json is not None:
        from spider.io import write_json_atomic

        write_json_atomic(args.json, result)
    _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
