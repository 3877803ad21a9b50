"""The quality goals of the benchmark (issue 8), decided from the TEST targets' numbers.

1. Model Spider with general tokens at least +0.05 wtau_paper above the best forward baseline and
   +0.03 above the best static prior;
2. with top-3 re-ranking at least +0.08 above both;
3. the lowest top-1 regret of all methods (general tokens or re-ranking);
4. general-token ranking at most 1 % of a forward baseline's time per target (the fastest one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spider.benchmark.methods import MethodResult

__all__ = ["MARGINS", "goal_check"]

#: Required wtau_paper margins: (general over forward, general over prior, re-rank over both).
MARGINS = {"general_vs_forward": 0.05, "general_vs_prior": 0.03, "rerank3_vs_both": 0.08}
MAX_TIME_FRACTION = 0.01


def _best(rows: Sequence[MethodResult], targets: Sequence[str]) -> MethodResult | None:
    finite = [r for r in rows if math.isfinite(r.mean("wtau_paper", targets))]
    return max(finite, key=lambda r: r.mean("wtau_paper", targets)) if finite else None


def goal_check(rows: Mapping[str, MethodResult], general: str, rerank3: str, forward: Sequence[str],
               priors: Sequence[str], targets: Sequence[str], ceiling3: float | None = None,
               rerank3_kept: bool = False) -> dict[str, Any]:
    """Verdicts (``goals``: name -> bool) and one sentence per goal (``text``) on ``targets``;
    ``ceiling3``: the best wtau_paper any top-3 re-ranking of the main ranking could reach there
    (:func:`spider.benchmark.forward.rerank_ceiling`), quoted beside goal 2; ``rerank3_kept``: the
    validation targets chose a top-3 re-ranking that leaves the main ranking as it is (goal 2 says so)."""
    g, r3 = rows[general], rows[rerank3]
    best_fwd = _best([rows[n] for n in forward], targets)
    best_prior = _best([rows[n] for n in priors], targets)
    tau = lambda row: row.mean("wtau_paper", targets) if row is not None else math.nan  # noqa: E731
    yes = lambda ok: "**met**" if ok else "**not met**"  # noqa: E731

    def spread(row: MethodResult) -> str:
        noise = row.spread.get("test", {}).get("wtau_paper")
        return f" (seed std {noise:.3f})" if noise else ""

    def beats(row: MethodResult, other: MethodResult | None, margin: float) -> bool:
        return other is None or tau(row) - tau(other) >= margin

    goals, text = {}, []
    name = lambda row: row.name if row is not None else "none"  # noqa: E731
    goals["general_vs_forward"] = beats(g, best_fwd, MARGINS["general_vs_forward"])
    goals["general_vs_prior"] = beats(g, best_prior, MARGINS["general_vs_prior"])
    text.append(f"1. Model Spider, general tokens ({g.name}) {tau(g):+.3f}{spread(g)} vs best forward baseline {name(best_fwd)} "
                f"{tau(best_fwd):+.3f} (margin {tau(g) - tau(best_fwd):+.3f}, needed +0.05: "
                f"{yes(goals['general_vs_forward'])}) and best static prior {name(best_prior)} {tau(best_prior):+.3f} "
                f"(margin {tau(g) - tau(best_prior):+.3f}, needed +0.03: {yes(goals['general_vs_prior'])}).")
    need = MARGINS["rerank3_vs_both"]
    goals["rerank3_vs_both"] = beats(r3, best_fwd, need) and beats(r3, best_prior, need)
    text.append(f"2. Re-rank top-3 ({r3.name}) {tau(r3):+.3f}{spread(r3)}, {tau(r3) - tau(g):+.3f} over the general-token "
                f"ranking alone{' (validation chose to keep that ranking)' if rerank3_kept else ''}: "
                f"margin {tau(r3) - tau(best_fwd):+.3f} over "
                f"{name(best_fwd)} and {tau(r3) - tau(best_prior):+.3f} over {name(best_prior)}, needed +{need:.2f} "
                f"over both: {yes(goals['rerank3_vs_both'])}."
                + (f" Ceiling: ordering the main ranking's top 3 by their true fine-tuned accuracy gives {ceiling3:+.3f} "
                   f"({ceiling3 - tau(best_fwd):+.3f} over {name(best_fwd)})." if ceiling3 is not None else ""))
    regrets = {n: r.mean("top1_regret", targets) for n, r in rows.items()
               if math.isfinite(r.mean("top1_regret", targets))}
    lowest = min(regrets, key=regrets.get) if regrets else general
    ours = min(regrets.get(general, math.inf), regrets.get(rerank3, math.inf))
    goals["lowest_regret"] = bool(regrets) and ours <= regrets[lowest]
    text.append(f"3. Lowest top-1 regret: {lowest} with {regrets.get(lowest, math.nan):.2f} points; Model Spider's "
                f"chosen rows ({general}, {rerank3}) {ours:.2f}: {yes(goals['lowest_regret'])}.")
    fastest = min((rows[n] for n in forward), key=lambda r: r.mean_seconds(targets), default=None)
    fraction = g.mean_seconds(targets) / fastest.mean_seconds(targets) if fastest else math.nan
    goals["time_fraction"] = bool(fraction <= MAX_TIME_FRACTION)
    text.append(f"4. General-token ranking takes {100 * fraction:.2f}% of the fastest forward baseline's time "
                f"({name(fastest)}; {g.mean_seconds(targets):.3f} s vs {fastest.mean_seconds(targets) if fastest else math.nan:.2f} s "
                f"per target), at most 1% needed: {yes(goals['time_fraction'])}.")
    return {"goals": goals, "all_met": all(goals.values()), "best_forward": name(best_fwd),
            "best_prior": name(best_prior), "general_time_fraction": fraction, "text": text}
