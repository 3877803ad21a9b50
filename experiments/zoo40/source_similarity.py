"""Source similarity: does knowing each PTM's pre-training data help where the bank is silent?
(issue 8) VALIDATION targets only.

A general-token ranking knows a PTM only through the bank tasks it trained on: held_out_domain.py
measures the fall on a target whose domain no bank task shows (zoo40: +0.586 to +0.255). But a zoo
usually knows what each PTM was pre-trained on. Here that becomes one number per (task, PTM), with
nothing trained: the source similarity s, the task's general-encoder class centres matched to the
class centres of the pool datasets of the PTM's source domains (:func:`source_similarity`: for each
task class its best cosine among a dataset's classes, averaged over the task's classes; the best
such dataset; a PTM of no pool dataset's domain gets the lowest value of the others). A ranking is
then z(Model Spider's scores) + beta z(s), beta in :data:`BETAS`, for the report's shipped scorers
("seen", cached) and for scorers trained without the bank tasks of the target's domain ("held out",
``held_out_domain.py``'s fits, trained fresh here). The pool datasets stay in s in both: this
measures a zoo whose PTMs' source data is known where the bank has no task of that domain, not a
domain no PTM saw (no PTM source there, s says nothing).

Nothing here is shipped: the probe measures whether building s into the ranker is worth it. Its
reading: a beta is worth building only if it gains on the held-out targets of both zoos and costs
the seen targets at most 0.01 on both. (That reading was written after a first look at the same
numbers in a scratch script, so it states how they are read; it tests nothing.) The gated variant
(beta only where :mod:`spider.familiarity` calls the target novel against the fit's training
tasks, as ``spider rank`` gates its forward fusion) was added after the ungated results: it asks
whether the held-out gain can be had without the seen cost.

One command per zoo, after its report (it reuses the report's trained scorers)::

    python experiments/zoo40/source_similarity.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/source_similarity.md]
    python experiments/zoo40/source_similarity.py --zoo-dir artifacts/minizoo --out experiments/minizoo/source_similarity.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from held_out_domain import without_domain  # noqa: E402
from probes import SEEDS, Probes, log, probe_main, report_head, write_report, zscore  # noqa: E402

from spider.benchmark.methods import win_shares  # noqa: E402
from spider.benchmark.retrieval import bank_reference, target_centres  # noqa: E402
from spider.benchmark.training import FitSpec, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.familiarity import unit_centres  # noqa: E402
from spider.zoo.domains import source_domain  # noqa: E402

BETAS = (0.0, 0.25, 0.5, 1.0)


def source_similarity(task: np.ndarray, datasets: Mapping[str, np.ndarray], known: Sequence[Sequence[str]]) -> np.ndarray:
    """[M] similarity of a task's class centres ``task`` [C, D] to each PTM's pool data.

    ``datasets``: pool dataset -> its class centres [N_d, D]; ``known[m]``: the pool datasets of
    PTM m's source domains. Per dataset, each task class's best cosine among the dataset's classes,
    averaged over the task's classes; per PTM the best of its datasets; a PTM without one gets the
    lowest value of the others (all zero when no PTM has one)."""
    own = unit_centres(task)
    per_dataset = {d: float((own @ unit_centres(c).T).max(1).mean()) for d, c in datasets.items()}
    s = np.array([max((per_dataset[d] for d in ds), default=np.nan) for ds in known])
    return np.where(np.isfinite(s), s, np.nanmin(s)) if np.isfinite(s).any() else np.zeros(len(known))


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    zoo, recipe = p.zoo, p.zoo.recipe
    pool_domain = {s.id: source_domain(s.source) for s in recipe.pool}
    ptm_domains = recipe.ptm_domains()
    known = [[d for d, dom in pool_domain.items() if dom in ptm_domains.get(m, ())] for m in zoo.models]
    centres = {spec.id: target_centres(zoo, spec.id) for spec in recipe.pool}  # a pool dataset's classes
    from spider.datamodules.finetune_bank import open_bank

    specs = open_bank(zoo.root, zoo.models).specs
    seen = [p.rank(train_scorer(zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log)) for s in SEEDS]
    reference = bank_reference(zoo)  # the fits' training tasks (held out: the kept ones)
    rows = []  # (target, domain, s alone, seen per beta, held out per beta or None, novel seen, novel held out)
    for target in recipe.val_targets:
        t = zoo.targets.index(target.id)
        domain = source_domain(target.source)
        s = source_similarity(target_centres(zoo, target.id), centres, known)
        held, novel_held = None, None
        kept = [i for i, spec in enumerate(specs) if all(pool_domain[d] != domain for d, _ in spec.classes)]
        if len(kept) < len(specs):
            ckpts = p.fit_checkpoints(f"heldout-{target.id}", {}, [without_domain(pool_domain, domain)])
            held = [p.rank(c) for c in ckpts]
            novel_held = reference.subset(kept).familiarity(target_centres(zoo, target.id)).novel

        def fused(preds: list[np.ndarray], beta: float) -> float:
            out = [np.tile(zscore(x[t]) + beta * zscore(s), (len(zoo.targets), 1)) for x in preds]
            return p.row(out).mean("wtau_paper", [target.id])

        alone = p.row([np.tile(s, (len(zoo.targets), 1))]).mean("wtau_paper", [target.id])
        rows.append((target.id, domain, alone, [fused(seen, b) for b in BETAS],
                     None if held is None else [fused(held, b) for b in BETAS],
                     reference.familiarity(target_centres(zoo, target.id)).novel, novel_held))
        log(f"{target.id}: s alone {alone:+.3f}, seen {rows[-1][3]}, held out {rows[-1][4]}")
    write_report(args.out, _lines(p, args, rows))


def _lines(p: Probes, args: argparse.Namespace, rows: list[tuple]) -> list[str]:
    fmt = lambda v: f"{v:+.3f}"  # noqa: E731
    heads = [f"beta {b:g}" for b in BETAS]
    lines = [*report_head(f"Source similarity: {p.zoo.name}", "source_similarity.py", args),
             f"Validation targets only; wtau_paper, mean over {len(SEEDS)} seeds. \"s alone\": ranking by the "
             "source similarity s; \"seen\": the report's shipped scorers; \"held out\": scorers trained without the "
             "bank tasks of the target's domain (none dropped: n/a); each ranking z(scores) + beta z(s). "
             "\"Paired\": gain of each beta over beta 0 on the targets' means and the share of validation-target "
             "resamples it wins. \"Novel\": the target against the fit's training tasks (`spider.familiarity`); "
             "\"gated\" applies beta to a novel target only, as `spider rank` gates its forward fusion. See the "
             "script's docstring.", "",
             "| target | domain | s alone | " + " | ".join(f"seen, {h}" for h in heads) + " | "
             + " | ".join(f"held out, {h}" for h in heads) + " |",
             "|---|---|---|" + "---|" * (2 * len(BETAS))]
    for target, domain, alone, seen, held, *_ in rows:
        lines.append(f"| {target} | {domain} | {fmt(alone)} | " + " | ".join(map(fmt, seen)) + " | "
                     + " | ".join(map(fmt, held) if held else ["n/a"] * len(BETAS)) + " |")
    seen = np.array([r[3] for r in rows]).T  # [beta, target]
    held = np.array([r[4] for r in rows if r[4]]).T
    held_means = [fmt(v) for v in held.mean(1)] if held.size else ["n/a"] * len(BETAS)
    lines.append(f"| **mean** | | {fmt(np.mean([r[2] for r in rows]))} | " + " | ".join(fmt(v) for v in seen.mean(1))
                 + " | " + " | ".join(held_means) + " |")

    def paired(values: np.ndarray) -> list[str]:
        return [""] + [f"{v.mean() - values[0].mean():+.3f}, {win_shares(np.stack([v, values[0]]))[0]:.0%}"
                       for v in values[1:]]
    lines.append("| **paired vs beta 0** | | | " + " | ".join(paired(seen)) + " | "
                 + " | ".join(paired(held) if held.size else ["n/a"] * len(BETAS)) + " |")
    # Gated: a familiar target keeps beta 0's ranking.
    gate = lambda values, novel: np.where(np.array(novel)[None], values, values[:1])  # noqa: E731
    gated_seen = gate(seen, [r[5] for r in rows])
    gated_held = gate(held, [r[6] for r in rows if r[4]]) if held.size else held
    novel = (f"{sum(r[5] for r in rows)} of {len(rows)} seen, "
             f"{sum(bool(r[6]) for r in rows if r[4])} of {held.shape[1] if held.size else 0} held out")
    lines += ["", f"Gated (novel targets: {novel}):", "", "| beta | seen | held out | seen, paired | held out, paired |",
              "|---|---|---|---|---|"]
    lines += [f"| {b:g} | {fmt(gated_seen[i].mean())} | " + (fmt(gated_held[i].mean()) if held.size else "n/a")
              + f" | {paired(gated_seen)[i]} | " + (paired(gated_held)[i] if held.size else "n/a") + " |"
              for i, b in enumerate(BETAS)]
    return lines


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "source_similarity.md", argv)


if __name__ == "__main__":
    sys.exit(main())
