"""Which measure of a fine-tuning bank run makes the best training label (issue 8), judged on the
VALIDATION targets only (test targets are not scored here).

A bank task holds about 4 test images per class, so its test accuracy moves in steps of several
points and ties are common: the labels the ranker learns from are noisy. The same run also gives
continuous measures of the fine-tuned model: the mean cross-entropy of those test images
(``test_nll``) and the mean training loss of its last epoch (``train_loss``). This script re-runs
the zoo's bank with the current code (which records ``test_nll``; the runs are otherwise the same,
accuracy included) into ``<work>/bank-probe/runs``, writes one bank folder per label variant, and
fits Model Spider on each (fine-tuning labels, 3 seeds; the shipped config otherwise)::

    python experiments/zoo40/bank_probes.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/bank_probes.md]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

from spider.benchmark.inputs import open_zoo  # noqa: E402
from spider.benchmark.methods import method_result  # noqa: E402
from spider.benchmark.training import FitSpec, fit_config, rank_targets  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.io import write_text_atomic  # noqa: E402

SEEDS = (0, 1, 2)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-task (row) z-scores; a constant row becomes zeros."""
    std = x.std(1, keepdims=True)
    return (x - x.mean(1, keepdims=True)) / np.where(std > 0, std, 1.0)


def bank_runs(zoo, root: Path, workers: int) -> dict[str, np.ndarray]:
    """``{measure: [K, M]}`` of the zoo's bank tasks, runs computed (or read back) under ``root``."""
    from spider.datamodules.label_cache import open_label_cache
    from spider.pipeline.bank import bank_jobs, split_task, task_id
    from spider.pipeline.finetune import run_ground_truth

    recipe = zoo.recipe
    settings = recipe.bank
    specs = open_label_cache(zoo.root / "labels", recipe.labels.num_label_tasks).specs[:settings.num_tasks]
    pool = {p.id: p.load(zoo.data_dir) for p in recipe.pool}
    jobs = [dataclasses.replace(job, views=split_task(specs[i], pool, i, settings))
            for i, job in ((int(job.target.removeprefix("task")), job)
                           for job in bank_jobs(specs, recipe.ptm_refs(zoo.root / "checkpoints"), settings))]
    results = run_ground_truth(jobs, settings.finetune, root, data_dir=zoo.data_dir, workers=workers)
    row = {task_id(i): i for i in range(len(specs))}
    col = {m: j for j, m in enumerate(zoo.models)}
    out = {k: np.full((len(specs), len(zoo.models)), np.nan) for k in ("test_accuracy", "test_nll", "train_loss")}
    for r in results:  # one learning rate and one seed: one run per (task, PTM)
        for key in out:
            out[key][row[r.target], col[r.model]] = getattr(r, key)
    return out


def write_bank(folder: Path, zoo, scores: np.ndarray) -> Path:
    """A bank folder whose ``accuracy.csv`` holds ``scores`` (higher = better), tasks as the zoo's."""
    from spider.datamodules.ground_truth_csv import GroundTruth, write_ground_truth
    from spider.pipeline.bank import task_id

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "tasks.jsonl", (zoo.root / "bank" / "tasks.jsonl").read_text())
    write_ground_truth(folder / "accuracy.csv", GroundTruth([task_id(i) for i in range(len(scores))],
                                                            list(zoo.models), np.round(scores, 6)))
    return folder


def fit_preds(zoo, work: Path, tag: str, bank: Path) -> list[np.ndarray]:
    from omegaconf import OmegaConf

    from spider.train import train

    zeros = collections.defaultdict(lambda: collections.defaultdict(float))
    preds = []
    for seed in SEEDS:
        cfg = fit_config(zoo, FitSpec("token", "finetune", None, seed=seed), work)
        OmegaConf.update(cfg, "data.finetune_bank", str(bank), merge=False)
        cfg.run_dir = str(work / "bank-probe" / "fits" / f"{tag}-seed{seed}")
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            metrics, _ = train(cfg)
        preds.append(rank_targets(Path(metrics["checkpoint"]), zoo, (0,), zeros)[0]["pred"])
    return preds


def val_scores(zoo, preds: list[np.ndarray]) -> tuple[float, float, float]:
    """(single-fit mean wtau_paper, ensemble wtau_paper, ensemble top-1 regret) on validation."""
    single = method_result("p", "p", zoo, preds, seconds=0, extract_seconds=0, score_seconds=0, ptm_passes=0,
                           general_passes=0)
    ens = method_result("p", "p", zoo, [np.mean([zscore(p) for p in preds], axis=0)], seconds=0,
                        extract_seconds=0, score_seconds=0, ptm_passes=0, general_passes=0)
    v = zoo.val_targets
    return single.mean("wtau_paper", v), ens.mean("wtau_paper", v), ens.mean("top1_regret", v)


def run(args: argparse.Namespace) -> None:
    zoo = open_zoo(args.zoo_dir)
    work = Path(args.work_dir) if args.work_dir else REPO / "artifacts" / f"{zoo.root.resolve().name}-report"
    log("bank runs (re-run once with test_nll recorded)")
    m = bank_runs(zoo, work / "bank-probe" / "runs", args.workers)
    shipped = np.asarray(__import__("spider.datamodules.finetune_bank", fromlist=["open_bank"])
                         .open_bank(zoo.root, zoo.models).accuracy)
    same = float(np.mean(np.isclose(shipped, m["test_accuracy"])))
    log(f"re-run accuracies equal to the zoo's bank in {same:.1%} of cells")
    variants = {
        "test accuracy (shipped)": m["test_accuracy"],
        "-test_nll": -m["test_nll"],
        "z(test accuracy) + z(-test_nll)": zscore(m["test_accuracy"]) + zscore(-m["test_nll"]),
        "-train_loss": -m["train_loss"],
        "z(test accuracy) + z(-train_loss)": zscore(m["test_accuracy"]) + zscore(-m["train_loss"]),
    }
    ties = {k: float(np.mean([len(np.unique(r)) / len(r) for r in v])) for k, v in variants.items()}
    rows = []
    for i, (name, scores) in enumerate(variants.items()):
        bank = write_bank(work / "bank-probe" / f"bank{i}", zoo, scores)
        single, ens, regret = val_scores(zoo, fit_preds(zoo, work, f"v{i}", bank))
        rows.append((name, ties[name], single, ens, regret))
        log(f"{name}: val wtau_paper single {single:+.3f}, ensemble {ens:+.3f}, regret {regret:.2f}")
    lines = [f"# Bank label probes: {zoo.name}", "", "Generated by one command (do not edit by hand):",
             f"```bash\n{' '.join(['python', 'experiments/zoo40/bank_probes.py', *args.argv])}\n```", "",
             f"Validation targets only ({', '.join(zoo.val_targets)}). Model Spider with fine-tuning labels, "
             f"the shipped config otherwise; {len(SEEDS)} seeds. The re-run bank's accuracies equal the "
             f"zoo's in {same:.1%} of cells. 'distinct' = mean share of distinct label values per task "
             "(1 = no ties).", "",
             "| label per (bank task, PTM) | distinct | val wtau_paper, single (mean of 3) | val wtau_paper, "
             "ensemble of 3 | val top-1 regret, ensemble |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {t:.2f} | {s:+.3f} | {e:+.3f} | {r:.2f} |" for n, t, s, e, r in rows]
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    log(f"wrote {args.out}")


@cli_main()
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo-dir", default=str(REPO / "artifacts" / "zoo40"))
    parser.add_argument("--work-dir", default=None, help="default artifacts/<zoo>-report")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "bank_probes.md"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
