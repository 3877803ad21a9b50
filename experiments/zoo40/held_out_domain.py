"""Does Model Spider generalise to a target whose domain no training task shows? (issue 8)
VALIDATION targets only.

Every validation target shares its domain (``spider.zoo.domains``) with a pool dataset, while some
test targets are of domains the pool lacks (clothing, silhouettes). So validation measures ranking
new classes of known domains, not new domains. Here each validation target is also ranked by scorers
trained without the bank tasks that draw classes from a pool dataset of the target's domain (the
report's main setting otherwise: fine-tuning labels, 3 seeds). The drop is what an unseen domain
costs. Forward baselines train nothing and are unaffected (the report's fusion with one, over
every PTM, is shown for the held-out fits, and gated: ordered by the baseline alone where
:mod:`spider.familiarity` calls the target novel, as ``spider rank`` does); the general encoder
still saw those pool datasets, so the drop is a lower bound.

One command per zoo, after its report (it reuses the report's scorers and caches)::

    python experiments/zoo40/held_out_domain.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/held_out_domain.md]
        [--override data.label_source=copeland ...]   # another setting, fitted fresh
        [--general keras_mobilenet_v1_025_imagenet]   # a zoo PTM's stored features as the general encoder
        [--general general,test_vit.gtsrb]            # several encoders' features side by side
        [--rank-prior-weight 0.5]                     # also ranked towards the rank prior (default: the report's)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import SEEDS, Probes, general_encoder_from, log, probe_main, report_head, write_report  # noqa: E402

from spider.benchmark.forward import fused_ranking as fuse  # noqa: E402
from spider.benchmark.methods import method_result  # noqa: E402
from spider.benchmark.retrieval import bank_reference, target_centres  # noqa: E402
from spider.benchmark.training import FitSpec, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.priors import PriorInputs, prior_scores  # noqa: E402
from spider.zoo.domains import source_domain  # noqa: E402


@contextlib.contextmanager
def without_domain(pool_domain: dict[str, str], domain: str):
    """Fits train only on bank tasks with no class from a pool dataset of ``domain``."""
    import spider.datamodules.episodes as episodes

    real = episodes.training_labels

    def kept(source, cache, bank=None, **kwargs):
        out = real(source, cache, bank, **kwargs)
        keep = [i for i, text in enumerate(out.spec_texts)
                if all(pool_domain[d] != domain for d, _ in json.loads(text)["classes"])]
        return dataclasses.replace(out, spec_texts=[out.spec_texts[i] for i in keep], scores=out.scores[keep])

    episodes.training_labels = kept
    try:
        yield
    finally:
        episodes.training_labels = real


def per_target(p: Probes, preds: list[np.ndarray], target: str) -> float:
    r = method_result("probe", "probe", p.zoo, preds, seconds=0, extract_seconds=0, score_seconds=0,
                      ptm_passes=0, general_passes=0)
    return r.mean("wtau_paper", [target])


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    with general_encoder_from(p, args.general) if args.general else contextlib.nullcontext():
        _run(args, p)


def measure(p: Probes, overrides: dict, tag: str, fused: tuple[str, float] | None,
            rank_prior: float | None = None) -> list[tuple]:
    """Per validation target: (id, domain, bank tasks left out, familiarity held out, then wtau_paper of
    Model Spider seen, held out, held out fused, gated, the held-out prior, LogME, GBC, and with
    ``rank_prior`` (a weight) Model Spider seen and held out ranking with that weight towards the
    rank prior of the bank tasks each fit trained on); fits of ``overrides`` (fresh, tagged ``tag``;
    none and no tag: the report's cached scorers). Scores without a weight rank with none."""
    recipe = p.zoo.recipe
    pool_domain = {s.id: source_domain(s.source) for s in recipe.pool}
    from spider.datamodules.finetune_bank import open_bank

    bank = open_bank(p.zoo.root, p.zoo.models)
    bank_specs = bank.specs
    if tag:  # another setting: fresh fits of it, seen and held out
        seen = p.fit_checkpoints(f"seen-{tag}", overrides)
    else:  # the report's main setting: its cached scorers
        seen = [train_scorer(p.zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log) for s in SEEDS]
    seen_preds = [p.rank(c, 0.0 if rank_prior is not None else None) for c in seen]
    every = list(range(len(bank_specs)))
    seen_shrunk = [p.rank(shrunk(p, bank, c, every, rank_prior)) for c in seen] if rank_prior is not None else None
    zoo = p.zoo if p._store is None else dataclasses.replace(p.zoo, store=p._store)  # --general's features
    reference = bank_reference(zoo)
    rows = []
    for target in recipe.val_targets:
        domain = source_domain(target.source)
        kept = [i for i, s in enumerate(bank_specs) if all(pool_domain[d] != domain for d, _ in s.classes)]
        dropped = len(bank_specs) - len(kept)
        held_ckpts = p.fit_checkpoints(f"heldout-{target.id}{'-' + tag if tag else ''}", overrides,
                                       [without_domain(pool_domain, domain)]) if dropped else []
        held = [p.rank(c, 0.0 if rank_prior is not None else None) for c in held_ckpts] or None
        held_shrunk = [p.rank(shrunk(p, bank, c, kept, rank_prior)) for c in held_ckpts] if rank_prior is not None else []
        # The held-out fits' training tasks are the kept bank tasks: the target's familiarity to them.
        known = reference.subset(kept).familiarity(target_centres(zoo, target.id)) if dropped else None
        novel = np.array([t == target.id and known is not None and known.novel for t in p.zoo.targets])
        row = (target.id, domain, dropped, known, per_target(p, seen_preds, target.id),
               per_target(p, held, target.id) if held else float("nan"),
               per_target(p, [fuse(x, p.scores[fused[0]], x.shape[1], fused[1])[0] for x in held], target.id) if held and fused else float("nan"),
               per_target(p, [fuse(x, p.scores[fused[0]], x.shape[1], fused[1], novel)[0] for x in held], target.id) if held and fused else float("nan"),
               # The fine-tuning-history prior of the kept bank tasks: what falling back to it gives.
               per_target(p, [np.tile(prior_scores("finetune_mean", PriorInputs(p.zoo.models, bank_accuracy=np.asarray(
                   bank.accuracy)[kept])), (len(p.zoo.targets), 1))], target.id) if dropped else float("nan"),
               *(per_target(p, [p.scores[b]], target.id) for b in ("logme", "gbc")),
               *((per_target(p, seen_shrunk, target.id), per_target(p, held_shrunk, target.id) if held_shrunk
                  else float("nan")) if rank_prior is not None else ()))
        rows.append(row)
        log(f"{target.id} ({domain}): {dropped} bank tasks left out; seen {row[4]:+.3f}, held out {row[5]:+.3f}")
    return rows


def shrunk(p: Probes, bank, ckpt, tasks: list[int], weight: float):
    """The scorer of ``ckpt`` ranking with ``weight`` towards the rank prior ``finetune_ood_mean`` of
    the bank tasks ``tasks`` only (those its fit trained on: a held-out domain's tasks never count)."""
    import torch

    from spider.modules.scorer_registry import load_scorer
    from spider.modules.token_scorer import standardise

    recipe = p.zoo.recipe
    values = prior_scores("finetune_ood_mean", PriorInputs(
        p.zoo.models, bank_accuracy=np.asarray(bank.accuracy)[tasks], bank_datasets=[bank.specs[k].datasets for k in tasks],
        dataset_domains={s.id: source_domain(s.source) for s in recipe.pool}, model_domains=recipe.ptm_domains()))
    scorer = load_scorer(ckpt)
    with torch.no_grad():
        scorer.rank_prior.copy_(standardise(values.tolist(), len(values)))
    scorer.set_rank_prior_weight(weight)
    return scorer


def _run(args: argparse.Namespace, p: Probes) -> None:
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.override)}  # "4" -> 4
    tag = "-".join([f"{k}={v}" for k, v in overrides.items()] + ([f"general={args.general}"] if args.general else []))
    fused = _report_fusion(Path(args.out).parent / "results.json")
    results = Path(args.out).parent / "results.json"
    weight = args.rank_prior_weight if args.rank_prior_weight is not None else (
        json.loads(results.read_text()).get("rank_prior_weight") if results.is_file() else None) or None
    rows = measure(p, overrides, tag, fused, weight)
    held_rows = [r for r in rows if r[2]]
    lines = [*report_head(f"Held-out domains: {p.zoo.name}", "held_out_domain.py", args),
             "Validation targets only; wtau_paper. \"Seen\": the report's main setting (fine-tuning labels)"
             + (f" with {', '.join(args.override)}" if overrides else "")
             + (f", general encoder {args.general} (its stored features; task tokens and familiarity)" if args.general else "")
             + f", mean over {len(SEEDS)} seeds. \"Held out\": the same fits without the bank tasks that draw classes "
             "from a pool dataset of the target's domain. A target without such a pool dataset is unchanged (n/a). "
             + (f"\"Fused\": the held-out fits' rankings fused with {fused[0]} over every PTM (weight {fused[1]:g}), "
                "the report's forward re-ranking over every PTM; \"gated\": the same, but a target that "
                "`spider.familiarity` calls novel against the held-out fits' training tasks (the kept bank tasks) is "
                "ordered by the baseline alone, as `spider rank` does. \"Familiarity\": the target's similarity to its "
                "nearest kept bank task / the novelty threshold of those tasks." if fused else "")
             + " \"Prior, held out\": the static prior `finetune_mean` of the kept bank tasks (mean fine-tuned "
             "accuracy per PTM), the fallback that needs no PTM run."
             + (f" Model Spider columns without \"rank prior\" rank with no rank prior; \"rank prior w\": the same fits "
                f"ranking with weight {weight:g} towards the rank prior `finetune_ood_mean` (`data.rank_prior`) of the bank "
                "tasks each fit trained on (held out: the kept ones only)." if weight else ""),
             "", "| target | domain | bank tasks left out | familiarity, held out | Model Spider, seen | "
             "Model Spider, held out | held out, fused | held out, gated | prior, held out | LogME | GBC |"
             + (f" seen, rank prior {weight:g} | held out, rank prior {weight:g} |" if weight else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if weight else "")]
    fmt = lambda v: "n/a" if not np.isfinite(v) else f"{v:+.3f}"  # noqa: E731
    known = lambda f: "n/a" if f is None else f"{f.similarity:.3f} / {f.threshold:.3f}" + (" novel" if f.novel else "")  # noqa: E731
    lines += [f"| {t} | {d} | {n} | {known(f)} | " + " | ".join(fmt(v) for v in values) + " |" for t, d, n, f, *values in rows]
    if held_rows:
        mean = np.mean([r[4:] for r in held_rows], axis=0)
        lines += [f"| **mean of the {len(held_rows)} held-out targets** | | | | " + " | ".join(fmt(v) for v in mean) + " |"]
    write_report(args.out, lines)


def _report_fusion(results: Path) -> tuple[str, float] | None:
    """(baseline, weight) of the report's forward re-ranking over every PTM, if its results are there."""
    if not results.is_file():
        return None
    winner = next((e["setting"] for e in json.loads(results.read_text()).get("forward_rerank_ablation", [])
                   if e["winner"] and e["setting"].startswith("top every PTM")), None)
    if winner is None:
        return None
    baseline, weight = winner.split(": ", 1)[1].split(", w = ")
    return baseline, float(weight)


@cli_main()
def main(argv=None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                            help="a config override of every fit (e.g. data.label_source=copeland); repeatable")
        parser.add_argument("--general", metavar="PTM", default=None,
                            help="a zoo PTM whose stored features replace the general encoder's (fits and familiarity); "
                                 "several, comma-separated (general = the recipe's own): their features side by side")
        parser.add_argument("--rank-prior-weight", type=float, default=None, metavar="W",
                            help="also rank with weight W towards the rank prior of each fit's bank tasks (default: "
                                 "the report's chosen data.rank_prior_weight, if above 0; 0: not)")

    return probe_main(run, __doc__.splitlines()[0], "held_out_domain.md", argv, options)


if __name__ == "__main__":
    sys.exit(main())
