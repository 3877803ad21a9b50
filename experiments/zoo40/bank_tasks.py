"""Which pool tasks should the fine-tuning bank hold? (issue 8) Judged on the VALIDATION targets only.

The bank is the first ``bank.num_tasks`` tasks of the label cache, drawn with the recipe's task
settings. Every target is one dataset's classes, while a training task draws its classes from 1 to
3 pool datasets: most bank tasks mix domains (digits beside traffic signs) in a way no target does.
This script builds the label cache and bank again with other task settings, in a sibling folder of
the zoo that links the zoo's store, checkpoints and ground truth (nothing else is rebuilt), then
compares single fits of the report's main setting (fine-tuning labels, 8 seeds each) and the
retrieval probe (nothing trained) on every bank.

One command per zoo (it reads the report's baseline scores and timings, computed when missing)::

    python experiments/zoo40/bank_tasks.py
    python experiments/zoo40/bank_tasks.py --zoo-dir artifacts/minizoo --out experiments/minizoo/bank_tasks.md \
        --variants 1-3x40 1-3x96 1-1x96:40

A variant ``LO-HIxN[:n]`` is a bank of ``N`` tasks of ``LO`` to ``HI`` pool datasets each, also scored
on its first ``n`` tasks alone. zoo40's default variants (:data:`VARIANTS`): the bank of 48 tasks of
1 to 3 datasets it shipped with until 2026-12-01, the same with 96 tasks, and 96 single-dataset
tasks, also scored on their first 48: they separate the effect of the task distribution from the
effect of the bank's size. A variant equal to the recipe is the zoo itself; the others are built
beside it. Resumable: a variant's build and fits are cached like the zoo's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import Probes, bank_retrieval, log, probe_main, report_head, write_report  # noqa: E402

from spider.errors import cli_main  # noqa: E402

SEEDS = tuple(range(8))
VARIANTS = ("1-3x48", "1-3x96", "1-1x96:48")  # zoo40's; see the docstring
VARIANT = re.compile(r"(\d+)-(\d+)x(\d+)(?::(\d+))?")
SHARED = ("store", "checkpoints", "ground_truth", "ground_truth.csv", "ground_truth_details.csv",
          "alternatives", "ptm_params.json")
REPORT_CACHES = ("baselines.json", "extraction_times.json")


def parse_variant(text: str) -> tuple[int, int, int, tuple[int, ...]]:
    """``"1-3x96:48"`` -> (1, 3, 96, (48,)): datasets per task, bank tasks, heads scored alone."""
    match = VARIANT.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO-HIxN or LO-HIxN:n (e.g. 1-1x96:48)")
    lo, hi, num_tasks = (int(g) for g in match.groups()[:3])
    head = () if match[4] is None else (int(match[4]),)
    if not 1 <= lo <= hi or num_tasks < 1 or any(not 1 <= h < num_tasks for h in head):
        raise argparse.ArgumentTypeError(f"{text!r} needs 1 <= LO <= HI, N >= 1 and 1 <= n < N")
    return lo, hi, num_tasks, head


def variant_recipe(recipe, lo: int, hi: int, num_tasks: int):
    task = dataclasses.replace(recipe.labels.task, min_datasets_per_task=lo, max_datasets_per_task=hi)
    return dataclasses.replace(recipe, labels=dataclasses.replace(recipe.labels, task=task),
                               bank=dataclasses.replace(recipe.bank, num_tasks=num_tasks))


def build_variant(base: Probes, recipe, out: Path, work: Path, same_labels: Path | None) -> None:
    """Labels and bank of ``recipe`` in ``out`` (the zoo's other parts linked), report caches in
    ``work``; ``same_labels``: a built zoo folder with the same label cache, whose labels and bank runs
    are reused (each run is cached under its task's spec, so the build redoes none of them)."""
    from spider.pipeline.build import build_zoo

    out.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if (base.zoo.root / name).exists() and not (out / name).exists():
            (out / name).symlink_to((base.zoo.root / name).resolve())
    if same_labels is not None and not (out / "bank").exists():
        shutil.copytree(same_labels / "labels", out / "labels", dirs_exist_ok=True)
        shutil.copytree(same_labels / "bank" / "runs", out / "bank" / "runs", copy_function=os.link)
    log(f"{out.name}: labels and bank ({recipe.bank.num_tasks} tasks)")
    build_zoo(recipe, out, stages=("labels", "bank"), progress=False, log=log)
    work.mkdir(parents=True, exist_ok=True)
    for name in REPORT_CACHES:  # same store, targets and PTMs: the same baseline scores and timings
        if not (work / name).exists():
            shutil.copyfile(base.work / name, work / name)


@contextlib.contextmanager
def first_bank_tasks(n: int):
    """Fits see only the bank's first ``n`` tasks (fine-tuning labels)."""
    import spider.datamodules.episodes as episodes

    real = episodes.training_labels

    def head(source, cache, bank=None, **kwargs):
        out = real(source, cache, bank, **kwargs)
        return dataclasses.replace(out, spec_texts=out.spec_texts[:n], scores=out.scores[:n])

    episodes.training_labels = head
    try:
        yield
    finally:
        episodes.training_labels = real


def run(args: argparse.Namespace) -> None:
    base = Probes(args.zoo_dir, args.work_dir)
    recipe = base.zoo.recipe
    rows, built = [], {recipe.labels: base.zoo.root}  # label settings -> a zoo folder with that cache
    for lo, hi, num_tasks, heads in args.variants:
        name = f"{lo}-{hi} datasets per task, {num_tasks} bank tasks"
        variant = variant_recipe(recipe, lo, hi, num_tasks)
        if variant.hash == recipe.hash:
            p, tag = base, f"{name} (the recipe)"
        else:
            slug = f"tasks{lo}-{hi}x{num_tasks}"
            out, work = base.zoo.root.parent / f"{base.zoo.root.name}-{slug}", base.work / "bank_tasks" / slug
            build_variant(base, variant, out, work, built.get(variant.labels))
            built.setdefault(variant.labels, out)
            p, tag = Probes(str(out), str(work)), name
        overrides = {"data.task": variant.labels.task}  # the label cache the variant's bank was drawn from
        for head in (None, *heads):
            label = tag if head is None else f"{name}: first {head} bank tasks only"
            patches = () if head is None else (first_bank_tasks(head),)
            fits = p.score(p.fit(f"banktasks{lo}-{hi}x{num_tasks}-first{head}", overrides, patches, seeds=SEEDS))
            retrieval = p.score([bank_retrieval(p.zoo, 10, limit=head)])
            rows.append((label, *fits, *retrieval))
            log(f"{label}: fits {fits[0]:+.3f} (regret {fits[1]:.2f}), retrieval {retrieval[0]:+.3f}")

    lines = [*report_head(f"Bank task settings: {base.zoo.name}", "bank_tasks.py", args),
             f"Validation targets only ({', '.join(base.zoo.val_targets)}). \"Single fits\": the report's main "
             f"setting (fine-tuning labels), mean over {len(SEEDS)} seeds. \"Retrieval\": the mean bank accuracy "
             "of the 10 bank tasks nearest to the target in general-encoder class centres (nothing trained).",
             "", "| bank | single fits: val wtau_paper | top-1 regret | retrieval: val wtau_paper | top-1 regret |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {w:+.3f} | {r:.2f} | {rw:+.3f} | {rr:.2f} |" for label, w, r, rw, rr in rows]
    write_report(args.out, lines)


@cli_main()
def main(argv=None) -> int:
    def variants(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--variants", nargs="+", type=parse_variant, default=[parse_variant(v) for v in VARIANTS],
                            metavar="LO-HIxN[:n]", help=f"banks to compare (default: {' '.join(VARIANTS)})")

    return probe_main(run, __doc__.splitlines()[0], "bank_tasks.md", argv, variants)


if __name__ == "__main__":
    sys.exit(main())
