"""Does another ranking loss, scorer size or learning rate rank better? (issue 8) VALIDATION targets only.

The scorer's loss, size and learning rate (``configs/model/token.yaml``: the paper's listwise loss,
width 64, one Transformer layer, dropout 0.1, learning rate 1e-3) are what the sweep files search
on the synthetic zoo. This probe measures them on a real zoo's validation targets, one change at a
time, the fine-tuning labels and everything else as the report's main setting, and scores single
fits over 8 seeds (single fits differ by a few hundredths between seeds). A setting replaces the
shipped one only if it wins on the validation targets of both zoos by more than the seeds' spread.

One command per zoo, after its report (it reuses the report's caches)::

    python experiments/zoo40/scorer_settings.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/scorer_settings.md]
    python experiments/zoo40/scorer_settings.py --zoo-dir artifacts/minizoo --out experiments/minizoo/scorer_settings.md

``--only wtau_pairwise --out experiments/zoo40/loss_wtau_pairwise.md``: the shipped row and the
settings named so (the pairwise loss weighted like the metric was added after the full run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import CLASS_KEEP_SEEDS, Probes, probe_main, report_head, seed_table, write_report  # noqa: E402

from spider.errors import cli_main  # noqa: E402

SEEDS = CLASS_KEEP_SEEDS  # 8
#: (row, config overrides): the shipped setting first, then one change each.
SETTINGS = (
    ("shipped: listwise loss, width 64, 1 layer, dropout 0.1", {}),
    ("loss listmle", {"model.loss": "listmle"}),
    ("loss listnet", {"model.loss": "listnet"}),
    ("loss mse", {"model.loss": "mse"}),
    ("loss wtau_pairwise", {"model.loss": "wtau_pairwise"}),
    ("width 32", {"model.dim": 32}),
    ("width 128", {"model.dim": 128}),
    ("2 layers", {"model.depth": 2}),
    ("dropout 0", {"model.dropout": 0.0}),
    ("dropout 0.3", {"model.dropout": 0.3}),
    ("learning rate 3e-4", {"model.lr": 3.0e-4}),
    ("learning rate 3e-3", {"model.lr": 3.0e-3}),
)


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    rows = []
    chosen = [(n, o) for i, (n, o) in enumerate(SETTINGS) if args.only is None or i == 0 or any(w in n for w in args.only)]
    for name, overrides in chosen:
        tag = "settings-" + ("shipped" if not overrides else "-".join(f"{k.split('.')[-1]}{v}" for k, v in overrides.items()))
        rows.append(p.seed_row(name, p.fit(tag, overrides, seeds=SEEDS)))
    lines = [*report_head(f"Scorer settings: {p.zoo.name}", "scorer_settings.py", args),
             f"Validation targets only ({', '.join(p.zoo.val_targets)}); single fits of the report's main setting "
             f"(fine-tuning labels) with one change each, mean over {len(SEEDS)} seeds (± std over seeds of the mean "
             "over targets). See the script's docstring.", "", *seed_table("setting", rows)]
    write_report(args.out, lines)


@cli_main()
def main(argv=None) -> int:
    def only(parser):
        parser.add_argument("--only", nargs="+", default=None, metavar="WORD",
                            help="run the shipped row and the settings whose row names contain a WORD")

    return probe_main(run, __doc__.splitlines()[0], "scorer_settings.md", argv, only)


if __name__ == "__main__":
    sys.exit(main())
