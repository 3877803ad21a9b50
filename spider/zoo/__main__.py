"""``python -m spider.zoo``: build a model zoo (features, ground truth, labels) from a recipe.

Examples::

    python -m spider.zoo build minizoo                    # -> artifacts/minizoo (resumes; no-op when done)
    python -m spider.zoo build tiny --out /tmp/tiny --workers 1
    python -m spider.zoo build minizoo --stages pretrain extract
    python -m spider.zoo list                             # recipes and their contents
    python -m spider.zoo add-model artifacts/minizoo runs/x/checkpoints/last.ckpt test_vit.cifar10
                                                          # -> runs/x/checkpoints/last+test_vit.cifar10.ckpt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spider.errors import SpiderError


def _parser() -> argparse.ArgumentParser:
    from spider.pipeline.build import STAGES

    parser = argparse.ArgumentParser(prog="python -m spider.zoo", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build only the missing parts of a zoo")
    build.add_argument("recipe", help="recipe name (see `list`): minizoo or tiny")
    build.add_argument("--out", help="output folder (default: artifacts/<recipe>)")
    build.add_argument("--data-dir", help="shared data folder (default: SPIDER_DATA_DIR or ../shared/data)")
    build.add_argument("--workers", type=int, help="processes (default: min(2, CPUs); 1 = this process)")
    build.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list the recipes")
    add = sub.add_parser("add-model", help="add a PTM to a trained ranker (learns only its token; spider.incremental)")
    add.add_argument("zoo_dir", help="the zoo build folder the ranker was trained on")
    add.add_argument("checkpoint", help="the trained ranker (never overwritten)")
    add.add_argument("model", help="the new PTM: a PTM of the zoo's zoo.json or a registered spider.zoo model")
    add.add_argument("--out", help="new checkpoint (default: <checkpoint stem>+<model>.ckpt beside it)")
    add.add_argument("--config", help="the run's config.yaml (default: <run_dir>/config.yaml)")
    add.add_argument("--data-dir", help="shared data folder (default: SPIDER_DATA_DIR or ../shared/data)")
    add.add_argument("--epochs", type=int, help="epochs for the new token (default: the run's trainer.max_epochs)")
    add.add_argument("--workers", type=int, default=1, help="processes for labelling and fine-tuning")
    add.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _list() -> int:
    from spider.pipeline.recipes import get_recipe, list_recipes

    for name in list_recipes():
        recipe = get_recipe(name)
        print(f"{name}: {recipe.description}")
        print(f"  PTMs ({len(recipe.ptm_ids())}): {' '.join(recipe.ptm_ids())}")
        print(f"  general encoder: {recipe.general.arch} on {'+'.join(recipe.general.sources)}")
        print(f"  pool: {' '.join(p.id for p in recipe.pool)}")
        print(f"  targets: {' '.join(t.id for t in recipe.targets)}")
    return 0


def _add_model(args: argparse.Namespace) -> int:
    from spider.incremental import add_model

    report = add_model(args.zoo_dir, args.checkpoint, args.model, args.out, config=args.config,
                       data_dir=args.data_dir, epochs=args.epochs, workers=args.workers, overwrite=args.overwrite,
                       progress=not args.no_progress)
    times = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    print(f"added {report.model}: {report.num_models} PTMs in {report.checkpoint} ({report.steps} steps, "
          f"final loss {report.final_loss:.4f}; {times})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "add-model":
            return _add_model(args)
        from spider.pipeline.build import build_zoo

        report = build_zoo(args.recipe, args.out, data_dir=args.data_dir, workers=args.workers,
                           progress=not args.no_progress, stages=args.stages)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    state = "built" if report.computed else "up to date, nothing to do"
    print(f"zoo {report.recipe} in {report.out}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
