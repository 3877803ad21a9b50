"""Can averaging, denoising or a domain-aware prior beat the rank prior's shrinkage? (issue 8)
VALIDATION targets only (test targets are not even scored here).

A single scorer's validation wtau_paper spreads by up to 0.17 between seeds when ranked by its own
scores (w = 0), and the rank prior (``data.rank_prior_weight`` w) is what steadies it. Here five
other ways to remove that variance or the bank labels' noise are measured against it, each at
several w (a ranking is the scorer's scores + ``w / (1 - w) * spread * z(prior)``, as
:class:`spider.modules.TokenScorer` ranks; nothing retrained for w):

* seed ensembles of 1, 3, 5 and 9 scorers of the report's main setting (3 disjoint ensembles
  each: 27 seeds; members' shrunk scores z-scored and averaged, as ``ScorerEnsemble`` does), and
  all 27 in one;
* bagged ensembles: 3 disjoint ensembles of 9 scorers, each trained on its own bootstrap resample
  of the bank's tasks (drawn from the fit's seed), so members differ in the tasks they learn from,
  not only in initialisation and episode order;
* ensembles over label sources: the report's scorers of fine-tuning labels with those of
  ``finetune_nll``, ``selected`` or ``mixed`` labels (same seed, z-scores averaged);
* bank labels denoised to rank r: each bank task's accuracies centred, the task x PTM matrix cut to
  its r largest singular components, the task means added back (fresh fits, 3 seeds);
* a domain-aware rank prior: a target's domain is that of its nearest bank task (general-encoder
  class centres, none when :mod:`spider.familiarity` calls it novel). The out-of-domain prior is
  wrong for a PTM on its own domain, so for the PTMs of the target's domain it is replaced by 0 (no
  shift, "zero") or by their mean bank accuracy on that domain on the prior's z scale
  ("in-domain"); "domain mean" gives every PTM its mean bank accuracy on the target's domain.

One command per zoo, after its report (it reuses the report's scorers and caches)::

    python experiments/zoo40/variance_probes.py --zoo-dir artifacts/minizoo --out experiments/minizoo/variance_probes.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import Probes, log, probe_main, report_head, write_report, zscore  # noqa: E402

from spider.benchmark.retrieval import bank_reference, target_centres  # noqa: E402
from spider.benchmark.training import FitSpec, train_scorer  # noqa: E402
from spider.datamodules.finetune_bank import open_bank  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.priors import PriorInputs, prior_scores  # noqa: E402
from spider.rank_core import load_ranker  # noqa: E402
from spider.run_inputs import _source_domains  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75)
SIZES = (1, 3, 5, 9)
ENSEMBLES = 3
SEEDS = (0, 1, 2)


@dataclasses.dataclass
class Shrinkable:
    """A scorer's scores of every target with w = 0 [T, M], its training spread and its z-scored prior [M]."""

    raw: np.ndarray
    spread: float
    prior: np.ndarray

    def at(self, w: float, prior: np.ndarray | None = None) -> np.ndarray:
        return self.raw + w / (1 - w) * self.spread * (self.prior if prior is None else prior)


def shrinkable(p: Probes, ckpt) -> Shrinkable:
    scorer = load_ranker(ckpt)
    return Shrinkable(p.rank(ckpt, 0.0), float(scorer.score_spread), scorer.rank_prior.double().numpy())


@contextlib.contextmanager
def low_rank_labels(rank: int):
    """Fits train on bank labels cut to their ``rank`` largest singular components (task means kept)."""
    import spider.datamodules.episodes as episodes

    real = episodes.training_labels

    def denoised(source, cache, bank=None, **kwargs):
        out = real(source, cache, bank, **kwargs)
        scores = np.asarray(out.scores, dtype=np.float64)
        mean = scores.mean(1, keepdims=True)
        u, s, vt = np.linalg.svd(scores - mean, full_matrices=False)
        cut = mean + (u[:, :rank] * s[:rank]) @ vt[:rank]
        return dataclasses.replace(out, scores=cut.astype(np.asarray(out.scores).dtype))

    episodes.training_labels = denoised
    try:
        yield
    finally:
        episodes.training_labels = real


@contextlib.contextmanager
def bagged_labels():
    """Each fit trains on a bootstrap resample (with replacement, as many as there are) of its
    labelled tasks, drawn from the fit's seed (``torch.initial_seed()``, set by ``spider.train``)."""
    import torch

    import spider.datamodules.episodes as episodes

    real = episodes.training_labels

    def bagged(source, cache, bank=None, **kwargs):
        out = real(source, cache, bank, **kwargs)
        rows = np.random.default_rng([torch.initial_seed(), 17]).integers(0, len(out.spec_texts), len(out.spec_texts))
        log(f"bagged labels: seed {torch.initial_seed()}, {len(set(rows.tolist()))} distinct of {len(rows)} tasks")
        return dataclasses.replace(out, spec_texts=[out.spec_texts[i] for i in rows], scores=np.asarray(out.scores)[rows])

    episodes.training_labels = bagged
    try:
        yield
    finally:
        episodes.training_labels = real


def domain_priors(p: Probes, prior: np.ndarray) -> dict[str, np.ndarray]:
    """``{variant: [T, M] z-scored prior}`` of the domain-aware variants (module docstring)."""
    zoo = p.zoo
    domains = _source_domains(zoo.manifest)
    reference = bank_reference(zoo)
    accuracy = np.asarray(open_bank(zoo.root, zoo.models).accuracy, dtype=np.float64)
    task_datasets = [[d for d, member in zip(reference.datasets, reference.membership[k]) if member]
                     for k in range(reference.num_tasks)]
    task_domains = [{domains["datasets"][d] for d in ds} for ds in task_datasets]
    model_domains = [set(domains["models"].get(m, ())) for m in zoo.models]
    # The rank prior's raw values (the library's prior, not a copy): its z scale places the domain means.
    ood = prior_scores("finetune_ood_mean", PriorInputs(zoo.models, bank_accuracy=accuracy, bank_datasets=task_datasets,
                                                        dataset_domains=domains["datasets"],
                                                        model_domains=domains["models"]))
    mu, sd = ood.mean(), ood.std()
    out = {v: np.tile(prior, (len(zoo.targets), 1)) for v in ("zero", "in-domain", "domain mean")}
    for i, target in enumerate(zoo.targets):
        sims = reference.similarities(target_centres(zoo, target))
        nearest = int(np.argmax(sims))
        domain = set() if sims[nearest] <= reference.threshold else task_domains[nearest]
        rows = [k for k, t in enumerate(task_domains) if t & domain]
        log(f"{target}: domain {sorted(domain) or 'novel'} (nearest bank task {nearest}, similarity {sims[nearest]:.3f})")
        if not rows:
            continue
        on_domain = (np.nanmean(accuracy[rows], axis=0) - mu) / sd
        home = np.array([bool(m & domain) for m in model_domains])
        out["zero"][i, home] = 0.0
        out["in-domain"][i, home] = on_domain[home]
        out["domain mean"][i] = on_domain
    return out


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    zoo = p.zoo
    main = [shrinkable(p, train_scorer(zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log))
            for s in range(max(SIZES) * ENSEMBLES)]
    for size in SIZES:
        for w in WEIGHTS:
            blocks = [main[i * size:(i + 1) * size] for i in range(ENSEMBLES)]
            p.val(f"seed ensemble of {size}, w = {w:g} ({ENSEMBLES} disjoint ensembles)",
                  [np.mean([zscore(m.at(w)) for m in block], axis=0) for block in blocks])
    for w in WEIGHTS:  # every seed in one ensemble: how much more a 3x bigger one buys (no spread)
        p.val(f"seed ensemble of {len(main)}, w = {w:g} (one ensemble)", [np.mean([zscore(m.at(w)) for m in main], axis=0)])
    bagged = [shrinkable(p, c) for c in p.fit_checkpoints("bagged", {}, [bagged_labels()], range(100, 100 + 9 * ENSEMBLES))]
    for w in WEIGHTS:
        p.val(f"bagged ensemble of 9, w = {w:g} ({ENSEMBLES} disjoint ensembles)",
              [np.mean([zscore(m.at(w)) for m in bagged[i * 9:(i + 1) * 9]], axis=0) for i in range(ENSEMBLES)])
    for other in ("finetune_nll", "selected", "mixed"):
        mates = [shrinkable(p, train_scorer(zoo, FitSpec("token", other, None, seed=s), p.work, log=log)) for s in SEEDS]
        for w in (0.5, 0.75):
            p.val(f"label-source ensemble finetune + {other}, w = {w:g}",
                  [zscore(a.at(w)) + zscore(b.at(w)) for a, b in zip(main, mates)])
    for rank in (1, 2, 3, 5):
        fits = [shrinkable(p, c) for c in p.fit_checkpoints(f"lowrank{rank}", {}, [low_rank_labels(rank)], SEEDS)]
        for w in WEIGHTS:
            p.val(f"bank labels cut to rank {rank}, w = {w:g}", [f.at(w) for f in fits])
    for variant, prior in domain_priors(p, main[0].prior).items():
        for w in (0.25, 0.5, 0.75):
            p.val(f"domain-aware prior ({variant}), w = {w:g}", [m.at(w, prior) for m in main[:len(SEEDS)]])
    lines = [*report_head(f"Variance probes: {zoo.name}", "variance_probes.py", args),
             f"Validation targets only ({', '.join(zoo.val_targets)}). Means over {len(SEEDS)} seeds (seed ensembles: "
             f"over {ENSEMBLES} disjoint ensembles). Single scorers of the report's main setting at w = 0 / 0.5 / 0.75 "
             "are the first rows of 'seed ensemble of 1'. See the script's docstring for each probe.",
             "", "| probe | val wtau_paper | val top-1 regret |", "|---|---|---|"]
    lines += [f"| {name} | {w:+.3f} | {r:.2f} |" for name, w, r in p.rows]
    write_report(args.out, lines)


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "variance_probes.md", argv)


if __name__ == "__main__":
    sys.exit(main())
