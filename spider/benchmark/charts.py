"""Figures of a benchmark: quality against time (paper Fig. 1c) and spider charts (paper Sec. 5.4)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from spider.benchmark.inputs import Zoo
from spider.benchmark.methods import MethodResult

__all__ = ["ability_profiles", "domain_axes", "group_axes", "plot_efficiency", "plot_spider_charts", "truth_profiles"]

COLOURS = {"baseline": "tab:gray", "aggregate": "black", "prior": "tab:blue", "spider": "tab:red",
           "history": "tab:green"}


def ability_profiles(ckpt: Path, zoo: Zoo, datasets: Sequence[str], tasks: int, seed: int = 0) -> np.ndarray:
    """What the scorer says each PTM is good at: [M, len(datasets)] in [0, 1].

    For every dataset, ``tasks`` random tasks (up to 10 classes of up to 20 images, seeded) are
    scored; each task's scores become percentile ranks among the M PTMs (1 = ranked first), and
    the profile is their mean: the paper's "averaged similarity between a PTM and the tasks".
    """
    from spider.datamodules.tokens import class_centres
    from spider.modules.scorer_registry import load_scorer

    model = load_scorer(ckpt).eval()
    rng = np.random.default_rng(seed)
    out = np.zeros((len(zoo.models), len(datasets)))
    for d, dataset in enumerate(datasets):
        entry = zoo.store.entry(zoo.general, dataset)
        labels = np.unique(entry.labels(), return_inverse=True)[1].reshape(-1)
        classes = np.unique(labels)
        ways = min(10, len(classes))
        tokens = []
        for _ in range(tasks):
            chosen = rng.choice(classes, ways, replace=False)
            rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:20] for c in chosen])
            relabel = np.searchsorted(np.sort(chosen), labels[rows])
            tokens.append(class_centres(entry.features(np.sort(rows)), relabel[np.argsort(rows)], ways).float())
        batch = torch.stack(tokens)
        with torch.no_grad():
            scores = model(batch, torch.ones(batch.shape[:2], dtype=torch.bool)).numpy()
        out[:, d] = (scores.argsort(axis=1).argsort(axis=1) / max(len(zoo.models) - 1, 1)).mean(axis=0)
    return out


def truth_profiles(zoo: Zoo, datasets: Sequence[str]) -> np.ndarray:
    """[M, len(datasets)] percentile rank of each PTM's true accuracy (NaN for non-targets)."""
    out = np.full((len(zoo.models), len(datasets)), np.nan)
    for d, dataset in enumerate(datasets):
        if dataset in zoo.targets:
            acc = zoo.truth[zoo.targets.index(dataset)]
            out[:, d] = acc.argsort().argsort() / max(len(zoo.models) - 1, 1)
    return out


def domain_axes(zoo: Zoo, datasets: Sequence[str]) -> dict[str, str]:
    """``{dataset: axis}``: the source domain of each pool dataset and target (:mod:`spider.zoo.domains`),
    pool datasets on their own axes marked ``*`` (the scorer trained on them; targets it never saw)."""
    from spider.zoo.domains import source_domain

    pool = {p.id: p.source for p in zoo.recipe.pool}
    targets = {t.id: t.source for t in zoo.recipe.all_targets}
    return {d: f"{source_domain(pool[d])}*" if d in pool else source_domain(targets[d]) for d in datasets}


def group_axes(datasets: Sequence[str], values: np.ndarray,
               axis_of: Mapping[str, str] | None = None) -> tuple[list[str], np.ndarray]:
    """Merge the columns of ``values`` [M, len(datasets)] that share an axis: ``axis_of[dataset]``
    (e.g. :func:`domain_axes`), by default one axis per dataset family (``omniglot_eval0``,
    ``omniglot_eval1``, ... -> ``omniglot_eval``). Returns (axis names, [M, axes] means)."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(datasets):
        axis = axis_of[d] if axis_of is not None else d.rstrip("0123456789") if d[-1:].isdigit() else d
        groups.setdefault(axis, []).append(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        merged = np.stack([np.nanmean(values[:, idx], axis=1) for idx in groups.values()], axis=1)
    return list(groups), merged


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spider_charts(path: Path, models: Sequence[str], axes_names: Sequence[str], learned: np.ndarray,
                       truth: np.ndarray) -> None:
    """One radar per PTM: the learned profile (filled) and the true rank on targets (dots); axis
    names as given (pool axes end in ``*``)."""
    plt = _pyplot()
    num = len(models)
    cols = min(5, num)
    rows = math.ceil(num / cols)
    angles = np.linspace(0, 2 * np.pi, len(axes_names), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    fig = plt.figure(figsize=(3.2 * cols, 3.3 * rows + 0.6))
    for m, name in enumerate(models):
        ax = fig.add_subplot(rows, cols, m + 1, projection="polar")
        values = np.concatenate([learned[m], learned[m, :1]])
        ax.plot(closed, values, color="tab:red", linewidth=1.2)
        ax.fill(closed, values, color="tab:red", alpha=0.25)
        known = np.isfinite(truth[m])
        ax.scatter(angles[known], truth[m][known], color="black", s=12, zorder=3)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.5, 1.0])
        ax.set_yticklabels([])
        ax.set_xticks(angles)
        ax.set_xticklabels(axes_names, fontsize=6)
        ax.set_title(name, fontsize=8, pad=10)
    fig.suptitle("Model Spider's view of each PTM: mean percentile rank over sampled tasks of each dataset "
                 "(red; * = pool datasets)\nblack dots: true rank by fine-tuned accuracy on the targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


def plot_efficiency(path: Path, rows: Sequence[MethodResult], targets: Sequence[str], title: str = "") -> None:
    """Mean wtau_paper on ``targets`` against mean selection time per target, log x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    spider = []
    for i, row in enumerate(sorted(rows, key=lambda r: r.mean("wtau_paper", targets))):
        x, y = row.mean_seconds(targets), row.mean("wtau_paper", targets)
        if not (math.isfinite(x) and math.isfinite(y)) or x <= 0:
            continue
        ax.scatter([x], [y], color=COLOURS[row.kind], s=20 + 3 * row.ptm_passes, zorder=3)
        left = row.kind in ("baseline", "aggregate") and i % 2 == 1  # forward methods share one x
        # Model Spider's points lie close together: their labels alternate above and below.
        offset = (4, 6 if len(spider) % 2 == 0 else -11) if row.kind == "spider" else (-7, -3) if left else (7, -3)
        ax.annotate(row.name.replace("model_spider ", "MS "), (x, y), fontsize=7, color=COLOURS[row.kind],
                    xytext=offset, textcoords="offset points", ha="right" if left else "left")
        if row.kind == "spider":
            spider.append((x, y))
    if len(spider) > 1:
        xs, ys = zip(*sorted(spider))
        ax.plot(xs, ys, color="tab:red", linewidth=0.8, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("selection time per target (s, log scale): PTM/general forward passes + scoring")
    ax.set_ylabel("mean weighted tau (wtau_paper)")
    ax.set_title(title or "PTM selection: ranking quality vs time (marker size ~ PTM forward passes)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
