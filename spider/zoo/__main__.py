"""``python -m spider.zoo``: build a model zoo (features, ground truth, labels) from a recipe.

Examples::

    python -m spider.zoo build minizoo                    # -> artifacts/minizoo (resumes; no-op when done)
    python -m spider.zoo build tiny --out /tmp/tiny --workers 1
    python -m spider.zoo build minizoo --stages pretrain extract
    python -m spider.zoo info                             # every recipe: PTMs, domains, pool, targets
    python -m spider.zoo info zoo40 --json                # one recipe as JSON (counts, then the names)
    python -m spider.zoo add-model artifacts/minizoo runs/x/checkpoints/last.ckpt test_vit.cifar10
                                                          # -> runs/x/checkpoints/last+test_vit.cifar10.ckpt

    # the same build shared out over 2 processes (or nodes: see README "Scaling out"); --workers is per rank
    torchrun --standalone --nproc-per-node 2 -m spider.zoo build tiny --out /tmp/tiny
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spider.errors import cli_main


def _parser() -> argparse.ArgumentParser:
    from spider.pipeline.build import STAGES

    parser = argparse.ArgumentParser(prog="python -m spider.zoo", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build only the missing parts of a zoo")
    build.add_argument("recipe", help="recipe name (see `info`): minizoo, zoo40 or tiny")
    build.add_argument("--out", help="output folder (default: artifacts/<recipe>)")
    build.add_argument("--data-dir", help="shared data folder (default: SPIDER_DATA_DIR or ../shared/data)")
    build.add_argument("--workers", type=int, help="processes per rank (default: min(2, CPUs); 1 = this process)")
    build.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    info = sub.add_parser("info", help="what a recipe holds (every recipe without RECIPE)")
    info.add_argument("recipe", nargs="?", help="recipe name (default: all)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub.add_parser("list", help="same as `info` for every recipe")
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


def recipe_info(name: str) -> dict:
    """``{"recipe", "ptms", "source_domains", "pool", "val_targets", "test_targets"}`` as counts, and
    ``"names"``: the same keys as lists (PTM ids with their domains, domains, dataset ids), and
    ``"in_domain"``: per target, the PTMs pre-trained on its domain."""
    from spider.pipeline.recipes import get_recipe

    recipe = get_recipe(name)
    domains = recipe.ptm_domains()
    names = {"ptms": domains, "source_domains": sorted({d for ds in domains.values() for d in ds}),
             "pool": [p.id for p in recipe.pool], "val_targets": [t.id for t in recipe.val_targets],
             "test_targets": [t.id for t in recipe.targets]}
    return {"recipe": name, **{key: len(value) for key, value in names.items()},
            "description": recipe.description, "names": names,
            "in_domain": {t.id: list(t.in_domain) for t in recipe.all_targets}}


def _info(name: str | None, as_json: bool) -> int:
    import json

    from spider.pipeline.recipes import list_recipes

    infos = [recipe_info(n) for n in ([name] if name else list_recipes())]
    if as_json:
        print(json.dumps(infos[0] if name else infos))
        return 0
    for info in infos:
        names = info["names"]
        print(f"{info['recipe']}: {info['description']}")
        print(f"  PTMs ({info['ptms']}): {' '.join(names['ptms'])}")
        print(f"  source domains ({info['source_domains']}): {', '.join(names['source_domains'])}")
        print(f"  pool ({info['pool']}): {' '.join(names['pool'])}")
        for key in ("val_targets", "test_targets"):
            print(f"  {key.replace('_', ' ')} ({info[key]}), with the PTMs pre-trained on their domain:")
            for target in names[key]:
                print(f"    {target}: {', '.join(info['in_domain'][target]) or '-'}")
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


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("info", "list"):
        return _info(getattr(args, "recipe", None), getattr(args, "json", False))
    if args.command == "add-model":
        return _add_model(args)
    from spider.pipeline.build import build_zoo

    report = build_zoo(args.recipe, args.out, data_dir=args.data_dir, workers=args.workers,
                       progress=not args.no_progress, stages=args.stages)
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
