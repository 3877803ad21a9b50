"""The report's rank-prior ablation: how far Model Spider's rankings are shrunk towards the scorers'
rank prior (``data.rank_prior``, e.g. ``finetune_ood_mean``: each PTM's fine-tuning record on
domains it was not pre-trained on).

The weight changes ranking only, never training, so the main setting's trained scorers rank every
target once per weight; the weight that wins on the VALIDATION targets ranks every Model Spider
row of the report (test targets never decide). Seed ensembles get their own weight: averaging seeds
removes part of the variance the prior is there to shrink, so the weight best for one scorer
over-shrinks an ensemble (experiments/minizoo/variance_probes.md: 9-seed ensembles score +0.616 at
w = 0.25 and +0.607 at 0.5 on validation, single scorers +0.563 and +0.590).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spider.benchmark.inputs import Zoo
from spider.benchmark.markdown import ablation_table
from spider.benchmark.methods import MethodResult, ablation_entries, pick_winner, spider_row
from spider.benchmark.training import Refit, rank_targets

__all__ = ["WEIGHTS", "chosen_weights", "rank_prior_ablation", "section"]

#: Shrinkage weights w tried besides the config's: ranking = (1 - w) z(scores) + w z(prior).
WEIGHTS = (0.0, 0.25, 0.5, 0.75)


def rank_prior_ablation(zoo: Zoo, ckpts: Sequence[Path | Sequence[Path]], extraction: Any, shipped: float | None,
                        shipped_label: str = "config") -> tuple[float | None, MethodResult | None, list[dict[str, Any]]]:
    """(winning weight, its row, table entries) of the scorers ``ckpts`` (already trained: one per
    seed, or one seed ensemble, a list of scorers, per repeat) ranking with each weight (``shipped``:
    the config's, tried first and marked ``shipped_label``, kept unless another weight beats it firmly:
    :func:`~spider.benchmark.methods.pick_winner`); ``(None, None, [])`` when they have no rank prior."""
    from spider.modules.scorer_registry import load_scorer

    first = ckpts[0] if isinstance(ckpts[0], (str, Path, Refit)) else ckpts[0][0]
    first = first.decide if isinstance(first, Refit) else first
    if shipped is None or not hasattr(load_scorer(first), "rank_prior"):
        return None, None, []
    shipped = float(shipped)
    rows = {}
    for w in dict.fromkeys([shipped, *WEIGHTS]):
        runs = [rank_targets(c, zoo, (0,), extraction, rank_prior_weight=w)[0] for c in ckpts]
        label = f"w = {w:g}" + (" (scores unchanged)" if w == 0 else "") + (f" ({shipped_label})" if w == shipped else "")
        rows[w] = spider_row(label, zoo, runs, 0, f"shrunk towards the rank prior with weight {w:g}")
    best = pick_winner({r.name: r for r in rows.values()}, zoo, shipped=rows[shipped].name)
    weight = next(w for w, r in rows.items() if r.name == best)
    return weight, rows[weight], ablation_entries(list(rows.values()), best, zoo, len(ckpts))


def chosen_weights(results: dict[str, Any]) -> str:
    """The report header's phrase naming the chosen weights ('' without a rank prior)."""
    out = f", rank-prior weight **{results['rank_prior_weight']:g}** (single scorers)" if results.get(
        "rank_prior_ablation") else ""
    if results.get("ensemble_rank_prior_ablation"):
        out += f", **{results['ensemble_rank_prior_weight']:g}** ({results['budget']['ensemble_size']}-seed ensembles)"
    return out


def section(results: dict[str, Any]) -> list[str]:
    """The report's markdown section of the ablation (none without a rank prior): single scorers,
    then seed ensembles (``ensemble_rank_prior_ablation``, where the report has it)."""
    if not results.get("rank_prior_ablation"):
        return []
    lines = ["", "## Rank-prior ablation: shrinkage weight",
             f"The main setting's scorers (one per seed) rank every target with each weight w towards the rank prior "
             f"`{results['rank_prior']}` (`data.rank_prior`; a ranking is (1 - w) x the scores' z-score + w x the "
             "prior's, the scores' scale measured on the training tasks; w = 0 keeps the scores). Ranking only: "
             f"nothing is retrained. The choice on the validation targets' mean wtau_paper (w = "
             f"{results['rank_prior_weight']:g}) ranks the single-scorer rows above; only its test score is looked at.",
             "", ablation_table(results["rank_prior_ablation"])]
    if results.get("ensemble_rank_prior_ablation"):
        size = results["budget"]["ensemble_size"]
        lines += ["", f"Seed ensembles of {size} scorers (each member shrunk with w, members' z-scores averaged) "
                  "choose their own weight the same way: averaging seeds already removes part of the variance the "
                  f"prior shrinks. The choice (w = {results['ensemble_rank_prior_weight']:g}) ranks the ensemble row "
                  "and, where the ensemble is the main ranking, every re-ranking row. The seeds column counts "
                  f"disjoint ensembles of {size}.",
                  "", ablation_table(results["ensemble_rank_prior_ablation"])]
    return lines
