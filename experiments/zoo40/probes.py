"""Quality probes on a built zoo (issue 8): ideas tried against the report's main Model Spider
setting, each judged on the VALIDATION targets only (test targets are not even scored here).

One command, after the zoo's report (it reuses the report's work folder: trained scorers,
baseline scores, extraction times; the last two are computed here when missing)::

    python experiments/zoo40/probes.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/probes.md]

Probes (3 seeds each; "reference" = the report's setting, fine-tuning labels):

* score fusion at 0 PTM passes: z-scored Model Spider ensemble + TransferGraph (its setting chosen
  on validation), and + the Copeland-label Model Spider ensemble, over a grid of weights;
* forward-fused re-ranking: the top k of the ensemble re-ordered by a fusion of its z-scores with a
  forward baseline's (LogME, GBC, NLEEP) within the top k (k PTM passes, like the ReRanker);
* retrieval with nothing trained: the bank's accuracies on the pool tasks most like the target
  (what a learned ranker must beat besides the static prior);
* training changes: ``data.class_keep`` (the share of a bank task's classes an episode shows at
  least; 1 = every class, the paper's fixed tokens); fewer or more epochs; bank labels of PTMs pre-trained on a task's source
  datasets left out (they saw those classes, the targets' classes they never saw); the ImageNet
  MobileNet of the zoo as the general encoder instead of the recipe's; model tokens that add a
  learned projection of TransferGraph's PTM metadata (one-hot family and source domains, log
  parameter count) to the free tokens (``MetadataTokenScorer`` below: a scorer subclass, the
  documented way to try one).

The last two change what a fit reads, through two small wrappers around library functions
(:func:`spider.datamodules.episodes.training_labels` and ``spider.run_inputs._zoo_inputs``), so
that no probe needs a flag in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "experiments" / "minizoo"))

from spider.benchmark import forward, retrieval  # noqa: E402
from spider.benchmark.inputs import JsonCache, ReportError, open_zoo  # noqa: E402
from spider.benchmark.methods import method_result  # noqa: E402
from spider.benchmark.timing import time_extraction  # noqa: E402
from spider.benchmark.training import FitSpec, fit_config, rank_targets, train_scorer  # noqa: E402
from spider.benchmark.transfergraph import GRID, run_transfergraph  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.modules import TokenScorer, register_scorer  # noqa: E402
from spider.io import write_text_atomic  # noqa: E402

SEEDS = (0, 1, 2)
CLASS_KEEP_SEEDS = tuple(range(8))
ENCODER = "keras_mobilenet_v1_025_imagenet"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def zscore(pred: np.ndarray) -> np.ndarray:
    return (pred - pred.mean(-1, keepdims=True)) / (pred.std(-1, keepdims=True) + 1e-12)


class Probes:
    def __init__(self, zoo_dir: str, work_dir: str | None) -> None:
        self.zoo = open_zoo(zoo_dir)
        if not self.zoo.val_targets:
            raise ReportError(f"{zoo_dir}: no validation targets to judge probes on")
        self.work = Path(work_dir) if work_dir else REPO / "artifacts" / f"{self.zoo.root.resolve().name}-report"
        # The report's caches, under the report's identity (1 thread): computed here when missing.
        identity = {"models": self.zoo.models, "threads": 1, "host": platform.node()}
        self.work.mkdir(parents=True, exist_ok=True)
        self.extraction = time_extraction(self.zoo, JsonCache(self.work / "extraction_times.json", identity), log)
        self.scores, _ = forward.run_baselines(self.zoo, forward.applicable_baselines(),
                                               JsonCache(self.work / "baselines.json", identity), log)
        self.rows: list[tuple[str, float, float]] = []
        self._store = None  # another store for rankings (general_encoder_from)

    def score(self, preds: list[np.ndarray]) -> tuple[float, float]:
        """Validation means (wtau_paper, top-1 regret) over the seeds' predictions."""
        r = method_result("probe", "probe", self.zoo, preds, seconds=0, extract_seconds=0, score_seconds=0,
                          ptm_passes=0, general_passes=0)
        return r.mean("wtau_paper", self.zoo.val_targets), r.mean("top1_regret", self.zoo.val_targets)

    def val(self, name: str, preds: list[np.ndarray]) -> tuple[float, float]:
        """:meth:`score`, recorded as a row of the table."""
        values = self.score(preds)
        self.rows.append((name, *values))
        log(f"{name}: val wtau_paper {values[0]:+.3f}, top-1 regret {values[1]:.2f}")
        return values

    def ensemble(self, label: str, seeds) -> np.ndarray:
        """The z-scored mean of the report's cached scorers ``seeds`` of one label source."""
        ckpts = [train_scorer(self.zoo, FitSpec("token", label, None, seed=s), self.work, log=log) for s in seeds]
        return np.mean([zscore(rank_targets(c, self.zoo, (0,), self.extraction)[0]["pred"]) for c in ckpts], axis=0)

    def fit(self, tag: str, overrides: dict, patches=(), seeds=SEEDS) -> list[np.ndarray]:
        """Fresh fits (fine-tuning labels) with config ``overrides`` under ``patches``; their predictions."""
        from spider.train import train

        preds = []
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            for seed in seeds:
                cfg = fit_config(self.zoo, FitSpec("token", "finetune", None, seed=seed), self.work)
                for key, value in overrides.items():
                    from omegaconf import OmegaConf

                    OmegaConf.update(cfg, key, value, merge=False)
                cfg.run_dir = str(self.work / "probes" / f"{tag}-seed{seed}")
                with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                    metrics, _ = train(cfg)
                zoo = self.zoo if self._store is None else dataclasses.replace(self.zoo, store=self._store)
                preds.append(rank_targets(Path(metrics["checkpoint"]), zoo, (0,), self.extraction)[0]["pred"])
        return preds


def bank_retrieval(zoo, k: int, limit: int | None = None) -> np.ndarray:
    """[T, M] scores with nothing trained (:func:`spider.benchmark.retrieval.bank_retrieval`)."""
    return retrieval.bank_retrieval(zoo, (k,), limit)[0][k]


@contextlib.contextmanager
def labels_without_seen_sources(zoo, min_fraction: float):
    """Bank labels of a PTM on a task are dropped (NaN) when at least ``min_fraction`` (> 0: any)
    of the task's classes come from a dataset the PTM was pre-trained on."""
    import spider.datamodules.episodes as episodes
    from spider.zoo import get_zoo_model_info

    recipe = zoo.recipe
    pool_source = {p.id: p.source for p in recipe.pool}
    sources = {n: {get_zoo_model_info(n).source} for n in recipe.real_ptms}
    sources.update({s.id: set(s.sources) for s in recipe.pretrained})
    real = episodes.training_labels

    def masked(source, cache, bank=None, **kwargs):
        out = real(source, cache, bank, **kwargs)
        scores = np.array(out.scores)
        for i, text in enumerate(out.spec_texts):
            classes = json.loads(text)["classes"]
            for j, model in enumerate(cache.models):
                seen = np.mean([pool_source.get(d, d) in sources[model] for d, _ in classes])
                if seen >= min_fraction and seen > 0:
                    scores[i, j] = np.nan
        return dataclasses.replace(out, scores=scores)

    episodes.training_labels = masked
    try:
        yield
    finally:
        episodes.training_labels = real


class _PlusFeatures(torch.nn.Module):
    """Model tokens [M, d] -> tokens + a learned projection of fixed PTM features [M, F]."""

    def __init__(self, features: list[list[float]], dim: int) -> None:
        super().__init__()
        self.register_buffer("features", torch.tensor(features, dtype=torch.float32))
        self.proj = torch.nn.Linear(self.features.shape[1], dim, bias=False)
        torch.nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.proj(self.features)


@register_scorer("token_metadata")
class MetadataTokenScorer(TokenScorer):
    """TokenScorer whose model tokens are the free tokens plus a learned projection of fixed PTM
    features ``FEATURES`` [M, F] (set from :func:`metadata_features` before fitting; a probe only).
    A parametrization, so every use of ``model_tokens`` in the parent sees the sum."""

    FEATURES: list[list[float]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        parametrize.register_parametrization(self, "model_tokens", _PlusFeatures(self.FEATURES, self.model_tokens.shape[1]))


def metadata_features(zoo) -> list[list[float]]:
    """TransferGraph's PTM metadata of the zoo's PTMs as numbers: one-hot family, the share of each
    source domain among the PTM's pre-training datasets, standardised log parameter count."""
    from spider.pipeline.build_manifest import read_manifest
    from spider.transfergraph.zoo import ptm_metadata
    from spider.zoo.domains import source_domain

    meta = ptm_metadata(read_manifest(zoo.root))
    families = sorted({meta[m].family for m in zoo.models})
    domains = {m: [source_domain(s) for s in meta[m].source.split("+")] for m in zoo.models}
    names = sorted({d for ds in domains.values() for d in ds})
    logp = np.log([meta[m].params for m in zoo.models])
    logp = (logp - logp.mean()) / (logp.std() or 1.0)
    return [[float(meta[m].family == f) for f in families] + [domains[m].count(d) / len(domains[m]) for d in names]
            + [float(logp[i])] for i, m in enumerate(zoo.models)]


def link_ptm_folders(probes: Probes, alt: Path) -> None:
    """``alt`` (another store) sees every folder of the zoo's store but the general encoder's through
    symlinks; the caller fills ``alt/<general>``."""
    for ptm in probes.zoo.store.root.iterdir():
        if ptm.is_dir() and ptm.name != probes.zoo.general and not (alt / ptm.name).exists():
            alt.mkdir(parents=True, exist_ok=True)
            (alt / ptm.name).symlink_to(ptm.resolve(), target_is_directory=True)


@contextlib.contextmanager
def reading_store(probes: Probes, alt: Path, tag: str):
    """Fits (``spider.run_inputs._zoo_inputs``) and the probes' rankings read the store ``alt``; fits
    keep their label cache apart (``<label cache>-<tag>``)."""
    import spider.run_inputs as run_inputs
    from spider.store import FeatureStore

    real = run_inputs._zoo_inputs

    def patched(cfg):
        out = real(cfg)
        return dict(out, store=str(alt), label_cache=f"{out['label_cache']}-{tag}")

    run_inputs._zoo_inputs = patched
    probes._store = FeatureStore(alt)
    try:
        yield
    finally:
        run_inputs._zoo_inputs = real
        probes._store = None


def general_encoder_from(probes: Probes, model: str):
    """Fits and rankings read a store whose ``general`` entries are ``model``'s features (hard links
    into ``<work>/probes/store-<model>``, the other PTMs' folders linked). ``model`` may name several
    comma-separated stored encoders (``general`` is the recipe's own): their features side by side,
    each divided by its mean feature norm over the pool datasets so that every view weighs alike."""
    src = probes.zoo.store.root
    views = model.split(",")
    alt = probes.work / "probes" / f"store-{model if len(views) == 1 else 'views-' + '+'.join(views)}"
    link_ptm_folders(probes, alt)
    if len(views) > 1:
        _write_views(probes, views, alt)
        return reading_store(probes, alt, f"views-{'+'.join(views)}")
    for split in (p for d in (src / model).iterdir() if d.is_dir() for p in d.iterdir() if p.is_dir()):
        out = alt / probes.zoo.general / split.parent.name / split.name
        out.mkdir(parents=True, exist_ok=True)
        for f in split.iterdir():
            if f.name == "manifest.json":
                write_text_atomic(out / f.name, json.dumps(dict(json.loads(f.read_text()), model=probes.zoo.general)))
            elif not (out / f.name).exists():
                os.link(f, out / f.name)
    return reading_store(probes, alt, model)


def _write_views(probes: Probes, views: list[str], alt: Path) -> None:
    """``alt/<general>``: every (dataset, split) of the general encoder with the ``views``' features
    concatenated (atomic entries, skipped when present, so an interrupted probe resumes)."""
    from spider.store import FeatureStore, StoreError

    store, out = probes.zoo.store, FeatureStore(alt)
    general = probes.zoo.general
    pool = [s.id for s in probes.zoo.recipe.pool]
    scale = {v: float(np.mean([np.linalg.norm(store.entry(v, d).features(), axis=1).mean() for d in pool]))
             for v in views}
    for dataset in store.datasets(general):
        for split in store.splits(general, dataset):
            if out.has(general, dataset, split):
                continue
            base = store.entry(general, dataset, split)
            entries = [store.entry(v, dataset, split) for v in views]
            for v, e in zip(views, entries):
                if not np.array_equal(e.sample_ids(), base.sample_ids()):
                    raise StoreError(f"{e.path}: samples differ from the general encoder's; cannot join views")
            out.write(general, dataset, split, labels=base.labels(), sample_ids=base.sample_ids(),
                      class_names=base.class_names, info={"views": views},
                      features=np.concatenate([e.features() / scale[v] for v, e in zip(views, entries)], axis=1))


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    zoo = p.zoo
    ensembles = [p.ensemble("finetune", range(i * 3, i * 3 + 3)) for i in range(3)]  # the report's 3 ensembles
    p.val("reference: Model Spider ensemble (fine-tuning labels)", ensembles)
    copeland = p.ensemble("copeland", SEEDS)
    runs = run_transfergraph(zoo, GRID, seeds=SEEDS)
    tg_name = max(runs["settings"], key=lambda k: p.score(runs["settings"][k]["preds"])[0])
    p.val(f"TransferGraph {tg_name} (chosen on validation)", runs["settings"][tg_name]["preds"])
    tg = np.mean([zscore(x) for x in runs["settings"][tg_name]["preds"]], axis=0)
    for w in (0.2, 0.4, 0.6):
        p.val(f"fusion: (1 - {w}) Model Spider + {w} TransferGraph", [(1 - w) * e + w * tg for e in ensembles])
        p.val(f"fusion: (1 - {w}) Model Spider + {w} Copeland-label Model Spider", [(1 - w) * e + w * copeland for e in ensembles])
    for baseline in ("logme", "gbc", "nleep"):
        fwd = zscore(np.asarray(p.scores[baseline], dtype=np.float64))
        for k in (3, 5):
            for w in (0.5, 1.0):
                preds = []
                for e in ensembles:
                    pred = e.copy()
                    for i in range(len(zoo.targets)):
                        top = np.argsort(-e[i])[:k]
                        fused = (1 - w) * zscore(e[i, top]) + w * zscore(fwd[i, top])
                        pred[i, top[np.argsort(-fused)]] = np.sort(e[i, top])[::-1]
                    preds.append(pred)
                p.val(f"re-rank top {k} with {baseline} (weight {w:g})", preds)
    for k in (3, 10):
        p.val(f"retrieval, nothing trained: mean bank accuracy of the {k} bank tasks nearest in task tokens",
              [bank_retrieval(zoo, k)])
    # Single fits differ by a few hundredths between seeds: this comparison takes 8 seeds per setting.
    for keep in (0.5, 1.0, 0.25):
        shipped = " (shipped: 10 epochs, class_keep 0.5)" if keep == 0.5 else ""
        p.val(f"single fits, class_keep={keep:g}, {len(CLASS_KEEP_SEEDS)} seeds{shipped}",
              p.fit(f"classkeep{keep:g}", {"data.class_keep": keep}, seeds=CLASS_KEEP_SEEDS))
    for epochs in (4, 30):
        p.val(f"single fits, {epochs} epochs", p.fit(f"epochs{epochs}", {"trainer.max_epochs": epochs}))
    for fraction, what in ((0.0, "any"), (0.5, "half or more")):
        p.val(f"single fits, bank labels dropped where the PTM saw {what} of the task's classes' datasets",
              p.fit(f"unseen{fraction:g}", {}, [labels_without_seen_sources(zoo, fraction)]))
    with general_encoder_from(p, ENCODER):
        p.val(f"single fits, general encoder = {ENCODER}", p.fit(f"general-{ENCODER}", {}))
    MetadataTokenScorer.FEATURES = metadata_features(zoo)
    p.val("single fits, model tokens + a projection of PTM metadata (family, source domains, parameters)",
          p.fit("metadata-tokens", {"model.scorer": "token_metadata"}))

    lines = [f"# Quality probes: {zoo.name}", "", "Generated by one command (do not edit by hand):",
             f"```bash\n{' '.join(['python', 'experiments/zoo40/probes.py', *args.argv])}\n```", "",
             f"Validation targets only ({', '.join(zoo.val_targets)}); means over {len(SEEDS)} seeds (the "
             "ensemble rows: over the report's 3 ensembles of 3 seeds). See the script's docstring for each probe.",
             "", "| probe | val wtau_paper | val top-1 regret |", "|---|---|---|"]
    lines += [f"| {name} | {w:+.3f} | {r:.2f} |" for name, w, r in p.rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    log(f"wrote {args.out}")


def probe_main(run_probes, description: str, out: str, argv=None, add_arguments=None) -> int:
    """The command line of a probe script (this one and its siblings): parse, run, time;
    ``add_arguments(parser)`` adds a script's own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--zoo-dir", default=str(REPO / "artifacts" / "zoo40"))
    parser.add_argument("--work-dir", default=None, help="the report's work folder (default artifacts/<zoo>-report)")
    parser.add_argument("--out", default=str(HERE / out))
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    run_probes(args)
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "probes.md", argv)


if __name__ == "__main__":
    sys.exit(main())
