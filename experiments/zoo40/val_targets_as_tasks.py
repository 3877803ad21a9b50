"""Do fine-tuned targets make better training tasks than the bank's? (issue 8) VALIDATION targets
only; the test targets are not even scored.

The scorer learns from the fine-tuning bank: pool tasks of 10-30 images per class, one fine-tuning
run each, classes the pool-trained PTMs were pre-trained on. The validation targets carry the
ground truth's full protocol (chosen learning rate, two seeds, classes no PTM saw) and, on the mini
zoo, domains no bank task shows (photos, traffic signs, faces, other scripts). After every setting
is chosen on them, the usual last step of model selection is to train the chosen setting on them
too. Whether that pays is measured here without a test target: each validation target is ranked
by fits that trained on the bank plus the OTHER validation targets, never on itself.

Folds:

* ``domain``: a target's fits leave out every validation target of its source domain (Tiny-ImageNet
  objects and wildlife together, the two letter targets together): what extra tasks of other
  domains give a domain nobody labelled;
* ``target``: a target's fits leave out that target only (a sibling of its domain may train): the
  situation of a test target whose domain a validation target shows.

The fits are the library's (``data.val_targets_as_tasks``, with ``data.val_datasets`` the other
validation targets): an extra task is the whole stored train split of a validation target with its
ground-truth accuracies as labels, ``weight`` copies of it in the epoch's draw (like
``data.mixed_weight``); the episode sees it like a bank task (``data.class_keep`` included). Rows: mean wtau_paper over the
validation targets, the gain over the report's shipped fits (same seeds, bank only) and the share
of validation-target resamples the variant wins against them (``win_shares``).

Rule fixed before the first run: a recipe trains its shipped ranker on its validation targets too
when a variant gains in the ``domain`` folds and wins at least 75 % of resamples there (the report's
FIRM_SHARE); of the weights that do, the one with the best domain-fold mean ships. The ``target``
folds then say how much more a sibling gives.

One command per zoo, after its report::

    python experiments/zoo40/val_targets_as_tasks.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/val_targets_as_tasks.md]
    python experiments/zoo40/val_targets_as_tasks.py --zoo-dir artifacts/minizoo --out experiments/minizoo/val_targets_as_tasks.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from held_out_domain import per_target  # noqa: E402
from probes import SEEDS, Probes, log, probe_main, report_head, write_report  # noqa: E402

from spider.benchmark.methods import FIRM_SHARE, win_shares  # noqa: E402
from spider.benchmark.training import FitSpec, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.zoo.domains import source_domain  # noqa: E402

WEIGHTS = (1, 4)
FOLDS = ("domain", "target")


def left_out(zoo, target: str, fold: str) -> list[str]:
    """The validation targets a fit for ``target`` must not train on."""
    if fold == "target":
        return [target]
    domain = {t.id: source_domain(t.source) for t in zoo.recipe.val_targets}
    return [t for t in zoo.val_targets if domain[t] == domain[target]]


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    zoo = p.zoo
    val = list(zoo.val_targets)
    shipped = [p.rank(train_scorer(zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log)) for s in SEEDS]
    base = np.array([per_target(p, shipped, t) for t in val])
    log(f"shipped (bank only): val wtau_paper {base.mean():+.3f}")
    rows = []
    for fold in FOLDS:
        for weight in WEIGHTS:
            groups: dict[tuple[str, ...], list[str]] = {}
            for t in val:
                groups.setdefault(tuple(left_out(zoo, t, fold)), []).append(t)
            scores = {}
            for out, scored in groups.items():
                extra = [t for t in val if t not in out]
                tag = f"valtasks-{fold}-w{weight}-{'+'.join(out)}"
                # The library's own last step, on the other validation targets only.
                preds = p.fit(tag, {"data.val_datasets": extra, "data.val_targets_as_tasks": weight}, seeds=SEEDS)
                for t in scored:
                    scores[t] = per_target(p, preds, t)
                log(f"{fold} w{weight} without {'+'.join(out)}: " + ", ".join(f"{t} {scores[t]:+.3f}" for t in scored))
            var = np.array([scores[t] for t in val])
            share = float(win_shares(np.stack([var, base]))[0])
            rows.append((fold, weight, var, share))
            log(f"{fold} w{weight}: {var.mean():+.3f} (gain {var.mean() - base.mean():+.3f}, wins {share:.0%})")
    lines = report_head("Validation targets as training tasks", "val_targets_as_tasks.py", args)
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), "",
              "| fits train on | " + " | ".join(val) + " | **mean** | gain | wins |",
              "|---|" + "---|" * (len(val) + 3),
              "| the bank (the report's shipped fits) | " + " | ".join(f"{x:+.3f}" for x in base)
              + f" | **{base.mean():+.3f}** | | |"]
    for fold, weight, var, share in rows:
        what = "other domains'" if fold == "domain" else "the other"
        lines.append(f"| bank + {what} validation targets, x{weight} | " + " | ".join(f"{x:+.3f}" for x in var)
                     + f" | **{var.mean():+.3f}** | {var.mean() - base.mean():+.3f} | {share:.0%} |")
    firm = sorted((v.mean() - base.mean(), w, s) for f, w, v, s in rows
                  if f == "domain" and v.mean() > base.mean() and s >= FIRM_SHARE)
    lines += ["", "Rule fixed before the first run: train the shipped ranker on the validation targets too "
              f"when a variant gains in the domain folds and wins at least {FIRM_SHARE:.0%} of resamples; of those "
              "that do, the weight with the best domain-fold mean ships. "
              + (f"Met: x{firm[-1][1]} ({firm[-1][0]:+.3f}, {firm[-1][2]:.0%})." if firm else "Not met."), ""]
    write_report(args.out, lines)


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "val_targets_as_tasks.md", argv)


if __name__ == "__main__":
    sys.exit(main())
