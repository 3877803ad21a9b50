"""``python -m spider.zoo``: build a model zoo (features, ground truth, labels) from a recipe.

Examples::

    python -m spider.zoo build minizoo                    # -> artifacts/minizoo (resumes; no-op when done)
    python -m spider.zoo build tiny --out /tmp/tiny --workers 1
    python -m spider.zoo build minizoo --stages pretrain extract
    python -m spider.zoo list                             # recipes and their contents

    # the same build shared out over 2 processes (or nodes: see README "Scaling out"); --workers is per rank
    torchrun --standalone --nproc-per-node 2 -m spider.zoo build tiny --out /tmp/tiny
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
    build.add_argument("--workers", type=int, help="processes per rank (default: min(2, CPUs); 1 = this process)")
    build.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub.add_parser("list", help="list the recipes")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        from spider.pipeline.build import build_zoo

        report = build_zoo(args.recipe, args.out, data_dir=args.data_dir, workers=args.workers,
                           progress=not args.no_progress, stages=args.stages)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if report.ranks > 1:  # how the work was shared; rank 0 reports for all
        print(f"zoo {report.recipe}: rank {report.rank} of {report.ranks} built {report.built_here} item(s)")
        if report.rank:
            return 0
    print(report.table())
    state = "built" if report.computed else "up to date, nothing to do"
    print(f"zoo {report.recipe} in {report.out}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
