"""Can a budget of k PTM runs move the PTMs it did not run? (issue 8, goal 2) VALIDATION targets only.

The report's "Ceiling of top-k re-ranking" bounds every re-ranker that re-orders the main ranking's
top k among themselves: on zoo40 a perfect top-3 re-ordering adds +0.003 on validation. A re-ranker
could do more: what it learns about the k PTMs it ran also says something about the PTMs that behave
like them. This probe measures that with the simplest such model, Gaussian conditioning. The PTMs'
fine-tuned accuracies on a task (z-scored over the PTMs) are taken as Gaussian around ``c`` times the
main ranking's z-scores, with the PTMs' covariance over the fine-tuning bank's tasks (their z-scored
accuracies per task; shrunk towards a diagonal by ``shrink``). Observing the k PTMs moves every
other PTM by its covariance with them (:func:`propagate`). Two kinds of observation:

* **oracle**: the k PTMs' true z-scored accuracy on the target, the best any k runs could tell
  (like the ceiling, a bound, not a method);
* **forward**: what a forward baseline can tell from the k PTMs' features, their order: the k
  main-ranking z-scores re-ordered by a fusion with the baseline's z-scores within the k (weight
  ``w``, the report's forward re-ranking), their mean and spread kept.

Rows: for k in 3, 5, 10, the main ranking, the ceiling, and the best propagation of each kind over
the grid (``shrink`` 0.1 / 0.5, ``c`` 0.5 / 1; forward: also LogME, GBC or NLEEP, ``w`` 0.5 / 1) beside
the report's forward re-ordering without propagation (here without its novelty gate, for both). The best of a grid on the validation targets
flatters it: these are bounds. Nothing is trained; the report's main scorers (single fits, 3 seeds)
are reused, so it runs in a minute after the zoo's report::

    python experiments/zoo40/propagation.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/propagation.md]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import SEEDS, Probes, log, probe_main, report_head, write_report, zscore  # noqa: E402

from spider.benchmark.forward import fused_ranking  # noqa: E402
from spider.benchmark.training import FitSpec, rank_targets, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402

KS = (3, 5, 10)
SHRINKS = (0.1, 0.5)
SCALES = (0.5, 1.0)  # c: how far the truth follows the main ranking's z-scores
WEIGHTS = (0.5, 1.0)
BASELINES = ("logme", "gbc", "nleep")


def bank_covariance(accuracy: np.ndarray) -> np.ndarray:
    """[M, M] covariance of the PTMs' accuracies z-scored within each bank task ([K, M], NaN: a
    missing run, filled with its task's mean so that it adds nothing)."""
    filled = np.where(np.isfinite(accuracy), accuracy, np.nanmean(accuracy, axis=1, keepdims=True))
    return np.cov(zscore(filled), rowvar=False)


def propagate(mean: np.ndarray, cov: np.ndarray, observed: np.ndarray, values: np.ndarray,
              shrink: float) -> np.ndarray:
    """The posterior mean [M] of a Gaussian with ``mean`` [M] and ``cov`` [M, M] (shrunk: (1 - shrink)
    cov + shrink x its mean variance on the diagonal) given ``values`` [k] at the indices ``observed``
    [k]; observed entries take their values."""
    m = len(mean)
    sigma = (1 - shrink) * cov + shrink * np.eye(m) * np.diag(cov).mean()
    gain = np.linalg.solve(sigma[np.ix_(observed, observed)] + 1e-9 * np.eye(len(observed)), values - mean[observed])
    post = mean + sigma[:, observed] @ gain
    post[observed] = values
    return post


def forward_values(pred: np.ndarray, baseline: np.ndarray, top: np.ndarray, weight: float) -> np.ndarray:
    """The k main-ranking z-scores ``pred[top]`` re-ordered by (1 - w) x their z-scores + w x the
    baseline's within the k, keeping their mean and spread (a baseline tells the k's order only)."""
    main = zscore(pred)[top]
    fused = (1 - weight) * zscore(main) + weight * zscore(baseline[top])
    return main.mean() + main.std() * zscore(fused)


def propagated(preds: list[np.ndarray], cov: np.ndarray, k: int, shrink: float, scale: float, observe) -> list[np.ndarray]:
    """Every seed's [T, M] ranking after observing its top k per target (``observe(t, pred_t, top)``)."""
    out = []
    for pred in preds:
        rows = []
        for t, row in enumerate(pred):
            top = np.argsort(-row, kind="stable")[:k]
            rows.append(propagate(scale * zscore(row), cov, top, observe(t, row, top), shrink))
        out.append(np.stack(rows))
    return out


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """A baseline's [T, M] scores with a failed PTM (non-finite) below every other, as the report ranks it."""
    scores = np.asarray(scores, dtype=np.float64)
    floor = np.nanmin(np.where(np.isfinite(scores), scores, np.nan), axis=1, keepdims=True) - 1
    return np.where(np.isfinite(scores), scores, floor)


def run(args: argparse.Namespace) -> None:
    from spider.datamodules.finetune_bank import open_bank

    p = Probes(args.zoo_dir, args.work_dir)
    zoo = p.zoo
    preds = [rank_targets(train_scorer(zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log),
                          zoo, (0,), p.extraction)[0]["pred"] for s in SEEDS]
    cov = bank_covariance(open_bank(zoo.root, zoo.models).accuracy)
    truth = zscore(zoo.truth)
    scores = {b: finite_scores(p.scores[b]) for b in BASELINES if b in p.scores}

    def best(candidates):
        """(setting, (wtau_paper, regret)) of the best candidate on the validation targets."""
        scored = [(name, p.score(make())) for name, make in candidates]
        return max(scored, key=lambda item: item[1][0])

    rows = []
    main = p.score(preds)
    for k in KS:
        grid = list(itertools.product(SHRINKS, SCALES))
        ceiling = p.score([fused_ranking(x, zoo.truth, k, 1.0)[0] for x in preds])
        oracle = best((f"shrink {s:g}, c {c:g}",
                       lambda s=s, c=c: propagated(preds, cov, k, s, c, lambda t, row, top: truth[t, top]))
                      for s, c in grid)
        reorder = best((f"{b}, w {w:g}", lambda b=b, w=w: [fused_ranking(x, scores[b], k, w)[0] for x in preds])
                       for b, w in itertools.product(scores, WEIGHTS))
        fwd = best((f"{b}, w {w:g}, shrink {s:g}, c {c:g}",
                    lambda b=b, w=w, s=s, c=c: propagated(
                        preds, cov, k, s, c, lambda t, row, top: forward_values(row, scores[b][t], top, w)))
                   for b, w, (s, c) in itertools.product(scores, WEIGHTS, grid))
        rows.append((k, ceiling, oracle, reorder, fwd))
        log(f"k={k}: ceiling {ceiling[0]:+.3f}, oracle propagation {oracle[1][0]:+.3f} ({oracle[0]}), "
            f"forward re-ordering {reorder[1][0]:+.3f}, forward propagation {fwd[1][0]:+.3f} ({fwd[0]})")
    write_report(args.out, render(p, args, main, rows))


def render(p: Probes, args, main, rows) -> list[str]:
    lines = [*report_head(f"Propagating a top-k budget to every PTM: {p.zoo.name}", "propagation.py", args),
             f"Validation targets only ({', '.join(p.zoo.val_targets)}); wtau_paper (top-1 regret), mean over the "
             f"report's {len(SEEDS)} main scorers. Main ranking: {main[0]:+.3f} ({main[1]:.2f}). \"Ceiling\": the "
             "top k ordered by the truth, the others in place (the report's ceiling). \"Oracle propagation\": the "
             "top k's true accuracies propagated to every PTM through the bank's PTM covariance. \"Forward\": what a "
             "forward baseline tells of the top k (their order), without and with propagation. Propagation rows are "
             "the best of their grid on these targets (named), so they are bounds. See the script's docstring.", "",
             "| k | ceiling (re-order by truth) | oracle propagation | forward re-ordering | forward propagation |",
             "|---|---|---|---|---|"]
    for k, ceiling, (on, o), (rn, r), (fn, f) in rows:
        lines.append(f"| {k} | {ceiling[0]:+.3f} ({ceiling[1]:.2f}) | {o[0]:+.3f} ({o[1]:.2f}; {on}) | "
                     f"{r[0]:+.3f} ({r[1]:.2f}; {rn}) | {f[0]:+.3f} ({f[1]:.2f}; {fn}) |")
    return lines


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "propagation.md", argv)


if __name__ == "__main__":
    sys.exit(main())
