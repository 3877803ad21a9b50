"""The report's last step: the shipped ranker also trains on the validation targets
(``data.val_targets_as_tasks``), once they have decided every setting.

A fit that trained on a validation target cannot judge itself there, so the report keeps two fits
per seed (:class:`~spider.benchmark.training.Refit`): the bank-only fit ranks the validation targets
and every decision is made on them; the refit, what users get, ranks the test targets. This module
trains those pairs and writes the report's section, with the test numbers of both fits for the
record (nothing is decided on them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from spider.benchmark.inputs import Zoo
from spider.benchmark.markdown import fmt, table
from spider.benchmark.methods import MethodResult, spider_row
from spider.benchmark.training import FitSpec, Refit, rank_targets, train_scorer

__all__ = ["entries", "fit", "probe_command", "section"]


def fit(zoo: Zoo, spec: FitSpec, work: Path, copies: int, **options: Any) -> Path | Refit:
    """The scorer of ``spec`` (trained or reused); with ``copies`` > 0 (the shipped config's
    ``data.val_targets_as_tasks``) the pair of it and its refit with the validation targets."""
    decide = train_scorer(zoo, spec, work, **options)
    if not copies:
        return decide
    return Refit(decide, train_scorer(zoo, dataclasses.replace(spec, val_tasks=copies), work, **options))


def entries(zoo: Zoo, fits: Mapping[str, tuple[Sequence, Optional[float]]], rows: Mapping[str, MethodResult],
            extraction: Any) -> list[dict[str, Any]]:
    """Test numbers of the main rows (``rows``: refitted, as shipped) next to those of their bank-only
    fits (``fits``: row name -> (a :class:`Refit` per seed, or a list of them per seed ensemble;
    the rank-prior weight the row ranks with)): what the last step changed."""
    out = []
    for name, (ckpts, weight) in fits.items():
        decide = [[c.decide for c in one] if isinstance(one, (list, tuple)) else one.decide for one in ckpts]
        before = spider_row(name, zoo, [rank_targets(c, zoo, (0,), extraction, rank_prior_weight=weight)[0]
                                        for c in decide], 0, "")
        out.append({"row": name, **{f"{metric}_{which}": r.mean(metric, zoo.test_targets)
                                    for metric in ("wtau_paper", "top1_regret")
                                    for which, r in (("bank_only", before), ("refit", rows[name]))}})
    return out


def probe_command(zoo_dir: Path, out: Path, repo: Path) -> str:
    """The command of the probe that measured the last step on this zoo's validation targets."""
    return (f"python experiments/zoo40/val_targets_as_tasks.py --zoo-dir {_relative(zoo_dir, repo)} "
            f"--out {_relative(Path(out) / 'val_targets_as_tasks.md', repo)}")


def _relative(path: Path, repo: Path) -> str:
    """``path`` relative to ``repo`` when it lies inside (a command a reader can paste), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(repo).resolve()))
    except ValueError:
        return str(path)


def section(results: Mapping[str, Any]) -> list[str]:
    """The report's lines on the last step ([] when the shipped config does not take it)."""
    n = results.get("val_targets_as_tasks")
    if not n:
        return []
    rows = [[f"`{e['row']}`", fmt(e["wtau_paper_bank_only"]), fmt(e["wtau_paper_refit"]),
             f"{e['top1_regret_bank_only']:.2f}", f"{e['top1_regret_refit']:.2f}"] for e in results["refit"]]
    return ["", "## Last step: the validation targets as training tasks",
            "Once the validation targets have decided every setting above, the shipped ranker trains on them too "
            f"(`data.val_targets_as_tasks: {n}`: each whole validation target, labelled by its ground truth, {n} "
            "copies among the bank's tasks). Every Model Spider row's validation numbers therefore come from the "
            "fits without them (those decide), its test numbers from the refits (what users get). Why: each "
            "validation target ranked by fits trained on the other domains' validation targets gains on validation "
            f"([val_targets_as_tasks.md](val_targets_as_tasks.md), `{results['refit_probe']}`). "
            "The test targets of the fits without them, for the record (they decide nothing):", "",
            table(["row", "test wtau_paper, bank only", "test wtau_paper, shipped refit",
                   "test top-1 regret, bank only", "test top-1 regret, shipped refit"], rows)]
