"""``python -m spider.labels``: build, resume and inspect the label cache of training tasks.

Examples::

    # label 1000 tasks drawn from every non-target dataset of the store, with 2 processes
    python -m spider.labels build --store runs/store --out runs/labels --num-tasks 1000 --workers 2 \\
        --targets aircraft dtd pets
    # the same command again resumes a killed build (and is a no-op on a finished one)
    python -m spider.labels info runs/labels

A cache built here is the one :class:`~spider.datamodules.episodes.EpisodeDataModule` uses when
its settings (store contents, models, pool, split, task sizes, seed, baselines, aggregator, shard
size) are the same; any difference is refused with an error naming it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spider.errors import SpiderError, cli_main

__all__ = ["main"]


def _pair(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer, got {text!r}") from None
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    from spider.baselines.batch import DEFAULT_BASELINES
    from spider.datamodules.tasks import TASK_PRESETS, TaskConfig

    defaults = TaskConfig()
    parser = argparse.ArgumentParser(prog="python -m spider.labels", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="label training tasks into a cache folder (resumes a partial one)")
    build.add_argument("--store", required=True, help="feature-store root")
    build.add_argument("--out", required=True, help="label-cache folder")
    build.add_argument("--num-tasks", type=int, default=256, help="size of the labelled task bank (default 256)")
    build.add_argument("--workers", type=int, default=1, help="processes (default 1: in this process)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--baselines", nargs="+", default=list(DEFAULT_BASELINES), metavar="NAME",
                       help=f"label baselines (default: {' '.join(DEFAULT_BASELINES)})")
    build.add_argument("--aggregator", default="copeland")
    build.add_argument("--general", default="general", help="general encoder id (default: general)")
    build.add_argument("--models", nargs="+", metavar="ID", help="PTMs to rank (default: all but the general encoder)")
    build.add_argument("--pool", nargs="+", metavar="DATASET", help="pool datasets (default: every non-target)")
    build.add_argument("--targets", nargs="+", default=[], metavar="DATASET",
                       help="evaluation datasets, kept out of the pool")
    build.add_argument("--ground-truth", help="CSV whose datasets are targets (added to --targets)")
    build.add_argument("--split", default="train")
    build.add_argument("--preset", choices=sorted(TASK_PRESETS), help="task-size preset (options below override it)")
    for option, help_text in (("datasets-per-task", "datasets mixed per task"),
                              ("classes-per-task", "classes per task"),
                              ("samples-per-class", "samples per class")):
        build.add_argument(f"--{option}", nargs=2, type=_pair(option), metavar=("MIN", "MAX"),
                           help=f"{help_text} (default "
                                f"{getattr(defaults, 'min_' + option.replace('-', '_'))} "
                                f"{getattr(defaults, 'max_' + option.replace('-', '_'))})")
    build.add_argument("--min-class-size", type=int, help="least samples of a class to use it (default: min samples)")
    build.add_argument("--shard-size", type=int, default=64, help="tasks per shard file (default 64)")
    build.add_argument("--device", help="where baselines compute (default cpu; e.g. cuda)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="summarise a label cache")
    info.add_argument("cache", help="label-cache folder")
    return parser


def _task_config(args: argparse.Namespace):
    from spider.datamodules.tasks import TaskConfig

    overrides = {}
    for option in ("datasets_per_task", "classes_per_task", "samples_per_class"):
        value = getattr(args, option)
        if value is not None:
            overrides[f"min_{option}"], overrides[f"max_{option}"] = value
    if args.min_class_size is not None:
        overrides["min_class_size"] = args.min_class_size
    if args.preset:
        return TaskConfig.preset(args.preset, **overrides)
    return TaskConfig(**overrides)


def _build(args: argparse.Namespace) -> int:
    from spider.datamodules.ground_truth_csv import read_ground_truth
    from spider.datamodules.label_cache import resolve_label_config
    from spider.pipeline.labelling import build_label_cache

    targets = list(args.targets)
    if args.ground_truth:
        targets += [d for d in read_ground_truth(args.ground_truth).datasets if d not in targets]
    config = resolve_label_config(args.store, general_encoder=args.general, models=args.models, pool=args.pool,
                                  targets=targets, split=args.split, task=_task_config(args), seed=args.seed,
                                  baselines=args.baselines, aggregator=args.aggregator, shard_size=args.shard_size)
    if args.workers < 0:
        raise SpiderError(f"--workers: expected >= 0, got {args.workers}")
    report = build_label_cache(config, args.out, args.num_tasks, workers=args.workers,
                               progress=not args.no_progress, device=args.device)
    rate = f"{report.tasks_per_second:.2f} tasks/s" if report.computed else "nothing to compute"
    print(f"label cache {args.out}: {report.num_tasks} tasks x {len(config.models)} PTMs x "
          f"{len(config.baselines)} baselines; computed {report.computed}, reused {report.reused} "
          f"in {report.seconds:.1f} s ({rate})")
    if report.failed_scores:
        print(f"warning: {report.failed_scores} baseline scores failed (NaN, abstaining in "
              f"{config.aggregator}); first: {report.first_warning}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    import numpy as np

    from spider.datamodules.label_cache import open_label_cache

    cache = open_label_cache(args.cache)
    identity = cache.identity
    sizes = np.array([s.num_classes for s in cache.specs])
    samples = np.array([s.num_samples for s in cache.specs])
    print(f"label cache {args.cache} (hash {cache.config_hash[:12]})")
    print(f"  tasks: {cache.num_tasks}  classes/task: {sizes.min()}-{sizes.max()} (mean {sizes.mean():.1f})  "
          f"samples/task: {samples.min()}-{samples.max()}")
    print(f"  models ({len(cache.models)}): {' '.join(cache.models)}")
    print(f"  pool: {' '.join(map(str, identity['pool']))}  split: {identity.get('split')}  "
          f"seed: {identity.get('seed')}")
    print(f"  baselines: {' '.join(cache.baselines)} -> {cache.aggregator}")
    print(f"  labelled (task, model) pairs: {int(cache.mask.sum())}/{cache.mask.size}; "
          f"NaN baseline scores: {int(np.isnan(cache.raw).sum())}")
    return 0


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _build(args) if args.command == "build" else _info(args)


if __name__ == "__main__":
    sys.exit(main())
