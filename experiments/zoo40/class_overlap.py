"""Do the bank's tasks flatter the PTMs that were pre-trained on their classes? (issue 8) VALIDATION
targets only; nothing is trained.

The fine-tuning bank's tasks draw their classes from the pool datasets, and the zoo's pool-trained
PTMs were pre-trained on those very classes (``PretrainSpec.source_classes``), as the real PTMs
were on theirs (CIFAR-10 for the CIFAR ResNets, MNIST for the digit CNNs). A target never shares a
class with any PTM's pre-training (``tests/unit/test_zoo40_recipe.py``). So on a bank task of its
own dataset a PTM may be recalling classes it saw, where on a target of the same domain it meets
new ones. If that mattered, what the bank says of a domain would overrate those PTMs, and the
learned ranker, which ranks seen domains about as well as the bank's nearest tasks (the report's
bank-retrieval row), would inherit it.

Per validation target of a domain the pool shows, the bank's consensus is the mean over that
domain's bank tasks of each task's standardised accuracies (the PTMs as columns). The probe ranks
the target by it, then by the same consensus with the overlapping PTMs (pre-trained on the task's
dataset) moved down by delta standard deviations on each such task (:data:`DELTAS`). Rows: mean
wtau_paper over those targets, the gain over delta 0 and the share of validation-target resamples
it wins (``spider.benchmark.methods.win_shares``); per target, how the overlapping PTMs place on
the consensus and on the truth. The report's shipped scorers (seeds 0-2, cached) give the scale.

Reading fixed before the first run of this script: a delta that gains on the mean and wins 75 % of
resamples would say the bank's labels need an overlap correction (or a zoo whose PTMs pre-train on
classes the bank never uses). A scratch look at zoo40 came first (photos up, letters down, mean
flat), so this states how the numbers are read; it tests nothing.

One command per zoo, after its report::

    python experiments/zoo40/class_overlap.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/class_overlap.md]
    python experiments/zoo40/class_overlap.py --zoo-dir artifacts/minizoo --out experiments/minizoo/class_overlap.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from held_out_domain import per_target  # noqa: E402
from probes import (SEEDS, Probes, log, pretraining_datasets, probe_main, report_head,  # noqa: E402
                    write_report, zscore)

from spider.benchmark.methods import win_shares  # noqa: E402
from spider.benchmark.training import FitSpec, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.zoo.domains import source_domain  # noqa: E402

DELTAS = (0.0, 0.5, 1.0, 2.0)


def consensus(z: np.ndarray, saw: np.ndarray, delta: float) -> np.ndarray:
    """[M] mean over tasks of ``z`` [K, M] (each task's standardised accuracies), every entry whose
    PTM was pre-trained on the task's dataset (``saw`` [K, M] bool) first lowered by ``delta``."""
    return (z - delta * saw).mean(0)


def mean_place(values: np.ndarray, members: np.ndarray) -> float:
    """Mean 1-based place (best = 1) of the PTMs ``members`` [M] bool in the ranking by ``values``."""
    place = np.empty(len(values), dtype=int)
    place[np.argsort(-values, kind="stable")] = np.arange(1, len(values) + 1)
    return float(place[members].mean()) if members.any() else float("nan")


def run(args: argparse.Namespace) -> None:
    from spider.datamodules.finetune_bank import open_bank

    p = Probes(args.zoo_dir, args.work_dir)
    zoo, recipe = p.zoo, p.zoo.recipe
    pool_source = {s.id: s.source for s in recipe.pool}
    seen_by = pretraining_datasets(recipe)
    bank = open_bank(zoo.root, zoo.models)
    z = zscore(np.asarray(bank.accuracy, dtype=np.float64))  # [K, M]
    saw = np.array([[any(pool_source[d] in seen_by[m] for d in spec.datasets) for m in zoo.models]
                    for spec in bank.specs])
    shipped = [p.rank(train_scorer(zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log)) for s in SEEDS]

    targets, table, places = [], [], []
    for target in recipe.val_targets:
        domain = source_domain(target.source)
        tasks = [k for k, spec in enumerate(bank.specs)
                 if any(source_domain(pool_source[d]) == domain for d in spec.datasets)]
        if not tasks:
            continue
        overlap = saw[tasks].any(0)
        row = [per_target(p, shipped, target.id)]
        for delta in DELTAS:
            pred = consensus(z[tasks], saw[tasks], delta)
            row.append(per_target(p, [np.tile(pred, (len(zoo.targets), 1))], target.id))
        truth = zoo.truth[zoo.targets.index(target.id)]
        places.append((int(overlap.sum()), mean_place(consensus(z[tasks], saw[tasks], 0.0), overlap),
                       mean_place(truth, overlap)))
        targets.append((target.id, domain, len(tasks)))
        table.append(row)
        log(f"{target.id} ({domain}, {len(tasks)} bank tasks): " + ", ".join(f"{v:+.3f}" for v in row))
    if not targets:
        raise SystemExit(f"{zoo.name}: no validation target of a domain the pool shows: nothing to measure")
    write_report(args.out, markdown(zoo.name, args, targets, np.array(table), places))


def markdown(name: str, args, targets: Sequence[tuple], table: np.ndarray, places: Sequence[tuple]) -> list[str]:
    heads = ["Model Spider (shipped, seeds 0-2)", *(f"consensus, delta {d:g}" for d in DELTAS)]
    lines = [*report_head(f"Class overlap between pre-training and the bank: {name}", "class_overlap.py", args),
             "Validation targets of a domain the pool shows; wtau_paper; nothing trained. \"Consensus\": the "
             "mean standardised bank accuracy over the target's domain's bank tasks, the PTMs pre-trained on a "
             "task's dataset lowered by delta on that task. \"Places\": the mean place (1 = best) of those PTMs "
             "on the consensus and on the target's truth. See the script's docstring.", "",
             "| target | domain | bank tasks | " + " | ".join(heads) + " | PTMs pre-trained on its bank tasks: "
             "count, place on consensus, place on truth |",
             "|" + "---|" * (len(heads) + 4)]
    for (target, domain, tasks), row, (count, on_bank, on_truth) in zip(targets, table, places):
        lines.append(f"| {target} | {domain} | {tasks} | " + " | ".join(f"{v:+.3f}" for v in row)
                     + f" | {count}: {on_bank:.1f}, {on_truth:.1f} |")
    lines.append("| **mean** | | | " + " | ".join(f"**{v:+.3f}**" for v in table.mean(0)) + " | |")
    paired = []
    for j in range(2, table.shape[1]):
        gain = table[:, j].mean() - table[:, 1].mean()
        share = win_shares(table[:, [1, j]].T)[1]
        paired.append(f"{gain:+.3f}, {share:.0%}")
    lines.append("| **paired vs delta 0** | | | | | " + " | ".join(paired) + " | |")
    return lines


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "class_overlap.md", argv)


if __name__ == "__main__":
    sys.exit(main())
