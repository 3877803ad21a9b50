"""Ranking a target from several class subsets of it (issue 8): VALIDATION targets only.

A scorer ranks a target from the class centres of all its classes at once. zoo40 trains on episodes
that show a random half or more of a bank task's classes (``data.class_keep=0.5``), so a target of
20 classes is a token set larger than most it trained on, and one unlucky class can move the whole
ranking. This probe ranks each validation target from R random subsets of its classes (each a share
``keep`` of them, at least 2) and averages the scores (the rank-prior term is the same in every
view, so it is unchanged by the mean), against one view of all classes; nothing is retrained: the
report's trained scorers of the shipped setting (seeds 0-7) rank. The rule, fixed before
measuring: views replace the single ranking only if they win on the validation targets of both
zoos by more than the seeds' spread.

One command per zoo, after its report (it reuses the report's trained scorers)::

    python experiments/zoo40/task_subsets.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/task_subsets.md]
    python experiments/zoo40/task_subsets.py --zoo-dir artifacts/minizoo --out experiments/minizoo/task_subsets.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import CLASS_KEEP_SEEDS, Probes, log, probe_main, report_head, seed_table, write_report  # noqa: E402

from spider.benchmark.training import FitSpec, shipped_settings, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402

SEEDS = CLASS_KEEP_SEEDS  # 8
VIEWS = 16
#: (row, share of the classes per view; None = one view of every class, as shipped)
SETTINGS = (("shipped: every class, one view", None), ("16 views of 75 % of the classes", 0.75),
            ("16 views of 50 % of the classes", 0.5))


def view_scores(model: torch.nn.Module, centres: torch.Tensor, keep: float | None, seed: int) -> np.ndarray:
    """[M] mean scores of ``model`` over :data:`VIEWS` random class subsets of ``centres`` [C, D]
    (``keep``: share of the classes per view, at least 2; None: one view of every class)."""
    classes = centres.shape[0]
    if keep is None:
        subsets = [torch.arange(classes)]
    else:
        size = max(2, min(classes, round(keep * classes)))
        rng = np.random.default_rng([seed, classes])
        subsets = [torch.as_tensor(np.sort(rng.choice(classes, size, replace=False))) for _ in range(VIEWS)]
    with torch.no_grad():
        scores = [model(centres[s][None], torch.ones(1, len(s), dtype=torch.bool))[0] for s in subsets]
    return torch.stack(scores).mean(0).numpy()


def run(args: argparse.Namespace) -> None:
    from spider.rank import task_tokens
    from spider.rank_core import load_ranker

    p = Probes(args.zoo_dir, args.work_dir)
    zoo, shipped = p.zoo, shipped_settings(p.zoo)
    spec = FitSpec("token", shipped.label_source, shipped.prior)
    models = [load_ranker(train_scorer(zoo, dataclasses.replace(spec, seed=s), p.work, log=log)) for s in SEEDS]
    centres = {t: task_tokens(zoo.store, zoo.general, t)[0] for t in zoo.val_targets}
    rows = []
    for name, keep in SETTINGS:
        # Test targets are never scored: their rows are copies of a validation target's (ignored).
        preds = []
        for seed, model in zip(SEEDS, models):
            pred = {t: view_scores(model, centres[t], keep, seed) for t in zoo.val_targets}
            preds.append(np.stack([pred.get(t, pred[zoo.val_targets[0]]) for t in zoo.targets]))
        rows.append(p.seed_row(name, preds))
    lines = [*report_head(f"Ranking from class subsets: {zoo.name}", "task_subsets.py", args),
             f"Validation targets only ({', '.join(zoo.val_targets)}); the report's scorers of the shipped setting "
             f"({spec.setting}, its rank-prior weight), seeds {SEEDS[0]}-{SEEDS[-1]}, each ranking every target "
             "from one view of all classes or from the mean scores of 16 random class subsets; mean over seeds "
             "(± std over seeds of the mean over targets). See the script's docstring.", "",
             *seed_table("ranked from", rows)]
    write_report(args.out, lines)


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "task_subsets.md", argv)


if __name__ == "__main__":
    sys.exit(main())
