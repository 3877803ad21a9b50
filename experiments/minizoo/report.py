"""Benchmark report of a built zoo: Model Spider vs forward baselines and static priors, costs, ablation.

One command::

    python experiments/minizoo/report.py [--zoo-dir artifacts/minizoo] [--out experiments/minizoo] [--quick] [--fresh]
                                         [--seeds N] [--no-lgc]

reads a zoo built by ``spider zoo build <recipe>`` and writes into ``--out``:

* ``report.md``     validation and test tables (per target and mean; wtau_paper, wtau_symmetric,
                    top-1 regret) of Model Spider (general tokens, re-ranking of the top k = 1, 3, 5,
                    forward re-ranking), every forward baseline and their Copeland aggregate, every static
                    prior, TransferGraph (fitted on the fine-tuning bank); costs per target and of
                    building the zoo (fine-tuning bank included); the bank's protocol agreement; the label-
                    source and rank-prior ablations (winners chosen on the validation targets only); the goal
                    check on the test targets; plots.
* ``results.json``  ``recipe``, ``ptms``, ``val``/``test`` (``{method: {wtau_paper, wtau_symmetric,
                    top1_regret, seconds_per_target}}``), ``groups``, and every other number shown.
* ``efficiency.png`` (quality vs time on the test targets), ``spider_charts.png``.

The library parts live in :mod:`spider.benchmark`; this script orchestrates and renders.
Intermediate results live in ``--work-dir`` (default ``artifacts/<zoo folder>-report``): extraction
times, baseline scores, label caches and trained scorers. Every stage reuses what is there, so a
killed run resumes and a second run only re-renders (``--fresh`` starts over). ``--quick`` shrinks
training to a smoke run (tests use it on the ``tiny`` recipe).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from spider.benchmark import charts, costs, forward, goals, last_step, leave_one_out, lgc_rows, markdown as md, rank_prior, retrieval
from spider.benchmark.inputs import JsonCache, ReportError, open_zoo
from spider.benchmark.methods import FIRM_SHARE, METRICS, ablation_entries, method_result, pick_winner, prior_rows, spider_row, summary
from spider.benchmark.timing import time_extraction
from spider.benchmark.training import FitSpec, rank_targets, shipped_settings, train_scorer
from spider.benchmark.transfergraph import transfergraph_row
from spider.datamodules.label_sources import LABEL_SOURCES
from spider.errors import SpiderError, cli_main
from spider.io import write_json_atomic, write_text_atomic
from spider.progress import log_line as log

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPIDER = "model_spider"
AGGREGATE = "copeland"
LABEL_MEMBERS = ("logme", "leep", "nce", "hscore")  # the paper's label baselines (Copeland of these)
PRIOR = "finetune_mean"
RERANK_KS = (1, 3, 5)
RERANK_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fusion weights of the specific scores (0 = main ranking)


@dataclass(frozen=True)
class Budget:
    """How much the report trains: ``seeds`` per setting, ``max_epochs`` (None: the shipped config's)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    # Seed ensembles of the main setting: ``ensembles`` of ``ensemble_size`` seeds each (disjoint).
    ensembles: int = 3
    ensemble_size: int = 9  # 9 beat 3 and 5 at every weight but 0.75 (variance_probes.md)
    max_epochs: Optional[int] = None
    # PTMs with specific tokens per training task of the re-ranker (data.specific_models); 3 beat all
    # 20 on the validation targets.
    specific_models: int = 3
    chart_tasks: int = 16
    baselines: Optional[tuple[str, ...]] = None  # None: every applicable registered baseline


QUICK = Budget(seeds=(0,), ensembles=1, ensemble_size=2, max_epochs=2, specific_models=2, chart_tasks=2,
               baselines=LABEL_MEMBERS + ("transrate", "gbc", "sfda", "lfc"))


def label_source_ablation(zoo, budget: Budget, work: Path, extraction, shipped) -> tuple[dict, list, FitSpec]:
    """Token scorers for every label source, with and without the prior (ranking with the ``shipped``
    rank-prior weight where they have none); the winner on VALIDATION targets becomes the main
    setting. Returns (rows by setting, table entries, winning spec)."""
    rows, specs, errors = {}, {}, {}
    for source in LABEL_SOURCES:
        for prior in (None, PRIOR):
            spec = FitSpec("token", source, prior)
            try:
                runs = [rank_targets(train_scorer(zoo, dataclasses.replace(spec, seed=s), work, log=log,
                                                  max_epochs=budget.max_epochs), zoo, (0,), extraction,
                                     rank_prior_weight=None if prior else shipped.rank_prior_weight)[0]
                        for s in budget.seeds]
            except SpiderError as err:  # e.g. a zoo without a fine-tuning bank: the setting is skipped
                errors[spec.setting] = str(err).splitlines()[0]
                log(f"ablation {spec.setting}: skipped ({errors[spec.setting]})")
                continue
            rows[spec.setting] = spider_row(spec.setting, zoo, runs, 0, "TokenScorer, general tokens")
            specs[spec.setting] = spec
    if not rows:
        raise ReportError(f"no Model Spider setting could be trained: {errors}")
    winner = pick_winner(rows, zoo, shipped=shipped.setting)
    entries = ablation_entries(list(rows.values()), winner, zoo, len(budget.seeds))
    entries += [{"setting": name, "skipped": error} for name, error in errors.items()]
    return rows, entries, specs[winner]


def rerank_weight_ablation(zoo, coarse: Sequence, rerankers: Sequence, extraction, prior_weight) -> tuple[float, list]:
    """rerank@3 of every fusion weight (the re-rankers' ``rerank_weight`` first); the winner on
    VALIDATION targets is used for every rerank@k row. Returns (winning weight, table entries)."""
    from spider.modules.scorer_registry import load_scorer

    default = float(load_scorer(rerankers[0][0]).hparams.rerank_weight)
    rows = {}
    for w in [default, *(w for w in RERANK_WEIGHTS if w != default)]:
        runs = [rank_targets(c, zoo, (3,), extraction, rerankers=r, weight=w, rank_prior_weight=prior_weight)[3]
                for c, r in zip(coarse, rerankers)]
        rows[w] = spider_row(f"w = {w:g}" + (" (main ranking unchanged)" if w == 0 else "") + (" (config)" if w == default else ""),
                             zoo, runs, 3, "")
    best = pick_winner({r.name: r for r in rows.values()}, zoo, shipped=rows[default].name)
    return next(w for w, r in rows.items() if r.name == best), ablation_entries(list(rows.values()), best, zoo, len(coarse))


def report(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    commit = md.git_commit(REPO, ("spider", "configs", str(Path(__file__).resolve().relative_to(REPO))))
    import torch
    torch.set_num_threads(max(1, args.threads))
    # --seeds n: n seeds per ablation setting and n seed ensembles (a bigger zoo's report on 2 cores)
    budget = QUICK if args.quick else Budget(seeds=tuple(range(args.seeds)), ensembles=args.seeds)
    zoo = open_zoo(args.zoo_dir, args.data_dir)
    out = Path(args.out)
    incremental = leave_one_out.results_entry(out / "incremental.json", zoo)  # checked before any work
    work = Path(args.work_dir) if args.work_dir else REPO / "artifacts" / f"{zoo.root.resolve().name}-report"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    log(f"zoo {zoo.name}: {len(zoo.models)} PTMs, validation targets {', '.join(zoo.val_targets) or 'none'}, "
        f"test targets {', '.join(zoo.test_targets)}; work folder {work}")

    identity = {"models": zoo.models, "threads": args.threads, "host": platform.node()}
    timing_cache = JsonCache(work / "extraction_times.json", identity)
    extraction = time_extraction(zoo, timing_cache, log)
    baselines = list(budget.baselines or forward.applicable_baselines())
    baseline_cache = JsonCache(work / "baselines.json", identity)
    scores, seconds = forward.run_baselines(zoo, baselines, baseline_cache, log)

    num = len(zoo.models)
    all_extract = np.array([sum(extraction[m][t] for m in zoo.models) for t in zoo.targets])
    rows = {}
    for b in baselines:
        score_s = seconds[b].sum(axis=1)
        rows[b] = method_result(b, "baseline", zoo, [scores[b]], seconds=all_extract + score_s,
                                extract_seconds=all_extract, score_seconds=score_s, ptm_passes=num, general_passes=0)
    members = [b for b in LABEL_MEMBERS if b in baselines]
    agg, agg_s = forward.copeland_scores(scores, members)
    agg_s = agg_s + sum(seconds[b].sum(axis=1) for b in members)
    rows[AGGREGATE] = method_result(AGGREGATE, "aggregate", zoo, [agg], seconds=all_extract + agg_s,
                                    extract_seconds=all_extract, score_seconds=agg_s, ptm_passes=num,
                                    general_passes=0, note=f"Copeland of {', '.join(members)}")
    lgc_errors = []
    if not args.no_lgc:  # needs the PTMs themselves: about 10x a forward baseline's time
        lgc_cache = JsonCache(work / "lgc.json", {"threads": args.threads, "host": platform.node(), "lgc": lgc_rows.LGC_OPTIONS})
        lgc_scores, lgc_seconds, lgc_errors = lgc_rows.run_lgc(zoo, lgc_cache, log)
        rows["lgc"] = lgc_rows.lgc_row(zoo, lgc_scores, lgc_seconds)
    priors = prior_rows(zoo, work)
    rows.update({r.name: r for r in priors})
    log("transfergraph: fitting on the fine-tuning bank, hyperparameters chosen on validation")
    tgraph, tgraph_info = transfergraph_row(zoo, extraction, log=log, seeds=budget.seeds)
    retrieved, retrieval_info = retrieval.retrieval_row(zoo, extraction)  # nothing trained: the bar to clear
    familiar = retrieval.target_familiarity(zoo)  # each target against the bank tasks the scorers train on

    log(f"label-source ablation: {len(LABEL_SOURCES) * 2} settings x {len(budget.seeds)} seed(s)")
    shipped = shipped_settings(zoo)  # the config's label source, prior, rank prior and weights
    _, ablation, main = label_source_ablation(zoo, budget, work, extraction, shipped)
    # With the shipped last step a scorer is a (bank-only fit, refit) pair: spider.benchmark.last_step.
    fit_main = lambda seed: last_step.fit(zoo, dataclasses.replace(main, seed=seed), work, shipped.val_targets_as_tasks, log=log, max_epochs=budget.max_epochs)  # noqa: E731
    main_ckpts = [fit_main(s) for s in budget.seeds]
    prior_weight, prior_row, prior_ablation = rank_prior.rank_prior_ablation(zoo, main_ckpts, extraction, shipped.rank_prior_weight)
    log(f"rank-prior weight (best on validation): {prior_weight}")
    general = dataclasses.replace(prior_row or spider_row("", zoo, [rank_targets(c, zoo, (0,), extraction)[0] for c in main_ckpts], 0, ""), name=f"{SPIDER} general",
                                  note=f"TokenScorer, general tokens; labels {main.setting}" + (
                                      f", rank-prior weight {prior_weight:g}" if prior_row else "") + " (chosen on validation)")
    log(f"main setting (best on validation): {main.setting}; seed ensembles: {budget.ensembles} x {budget.ensemble_size} seeds")
    ensemble_ckpts = [[fit_main(s) for s in range(i * budget.ensemble_size, (i + 1) * budget.ensemble_size)] for i in range(budget.ensembles)]
    ens_first = (prior_weight, "single scorers'") if shipped.ensemble_rank_prior_weight is None else (shipped.ensemble_rank_prior_weight, "config")
    ens_weight, ens_row, ens_ablation = rank_prior.rank_prior_ablation(zoo, ensemble_ckpts, extraction, *ens_first)
    ensemble = dataclasses.replace(ens_row or spider_row("", zoo, [rank_targets(c, zoo, (0,), extraction)[0] for c in ensemble_ckpts], 0, ""),
                                   name=f"{SPIDER} ensemble", note=f"{budget.ensemble_size} seeds of the main setting, per-task standardised scores "
                                   "averaged" + (f", rank-prior weight {ens_weight:g} (chosen on validation)" if ens_row else ""))
    by_main = {general.name: general, ensemble.name: ensemble}  # single scorer or ensemble: chosen on validation
    refit = last_step.entries(zoo, {general.name: (main_ckpts, prior_weight), ensemble.name: (ensemble_ckpts, ens_weight)}, by_main, extraction) if shipped.val_targets_as_tasks else []
    main_name = pick_winner(by_main, zoo)
    main_weight = ens_weight if main_name == ensemble.name else prior_weight  # the re-rankings' shrinkage
    # Re-ranking refines the main ranking: its top k are re-scored by a ReRanker and fused with it
    # (spider.modules.ReRanking); re-ranker seed i refines the main ranker's i-th ensemble (or seed).
    # One re-ranker per ensemble: seed ensembles of re-rankers did not help on the validation targets.
    reranked = list(range(min(budget.ensembles, len(budget.seeds))))
    log(f"training {len(reranked)} re-ranker(s); they re-rank the top k of {main_name}")
    coarse = [ensemble_ckpts[i] if main_name == ensemble.name else fit_main(budget.seeds[i]) for i in reranked]
    rerankers = [[train_scorer(zoo, dataclasses.replace(main, scorer="reranker", seed=budget.seeds[i]), work, log=log,
                               max_epochs=budget.max_epochs, specific_models=budget.specific_models)] for i in reranked]
    weight, rerank_ablation = rerank_weight_ablation(zoo, coarse, rerankers, extraction, main_weight)
    log(f"re-ranking fusion weight (best on validation): {weight:g}")
    rerank_runs = [rank_targets(c, zoo, RERANK_KS, extraction, rerankers=r, weight=weight, rank_prior_weight=main_weight)
                   for c, r in zip(coarse, rerankers)]
    spider_rows = [general, ensemble] + [spider_row(f"{SPIDER} rerank@{k}", zoo, [r[k] for r in rerank_runs], min(k, num),
                                          f"ReRanker: top {k} of {main_name} re-scored with their own "
                                          f"features, fused with its scores (weight {weight:g})") for k in RERANK_KS]
    log("forward re-ranking: the main ranking's top k re-ordered with a forward baseline, chosen on validation")
    forward_rows, forward_ablation = forward.rerank_ablation(zoo, by_main[main_name], rows, scores, seconds, extraction, familiar)
    ceiling = forward.rerank_ceiling(zoo, by_main[main_name])  # what re-ranking could add at best
    spider_rows += list(forward_rows.values())  # top-3 re-ranking: the ReRanker's or a baseline's, best on val
    rerank3 = pick_winner({r.name: r for r in (spider_rows[2 + RERANK_KS.index(3)], forward_rows[3])}, zoo)
    order = [*spider_rows, *(rows[b] for b in baselines), *([rows["lgc"]] if "lgc" in rows else []), rows[AGGREGATE], *priors,
             tgraph, retrieved]
    by_name = {r.name: r for r in order}
    groups = {"model_spider": main_name, "model_spider_rerank3": rerank3,
              "forward_baselines": [*baselines, AGGREGATE], "static_priors": [r.name for r in priors]}

    out.mkdir(parents=True, exist_ok=True)
    charts.plot_efficiency(out / "efficiency.png", order, zoo.test_targets,
                           "Test targets: ranking quality vs time (marker size ~ PTM forward passes)")
    pool = list(zoo.manifest["data"]["pool_datasets"])
    datasets = pool + zoo.targets
    main_ckpt = work / "runs" / dataclasses.replace(main, val_tasks=shipped.val_targets_as_tasks).name / "checkpoints" / "last.ckpt"
    domains = charts.domain_axes(zoo, datasets)
    learned_per_dataset = charts.ability_profiles(main_ckpt, zoo, datasets, budget.chart_tasks)
    axes, learned = charts.group_axes(datasets, learned_per_dataset, domains)
    _, truth_axes = charts.group_axes(datasets, charts.truth_profiles(zoo, datasets), domains)
    charts.plot_spider_charts(out / "spider_charts.png", zoo.models, axes, learned, truth_axes)

    results = {
        "recipe": zoo.name, "ptms": num,
        "val": summary(order, zoo.val_targets) if zoo.val_targets else {},
        "test": summary(order, zoo.test_targets), "groups": groups,
        "command": args.command_line, "commit": commit, "machine": md.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(args.quick), "lgc_skipped": bool(args.no_lgc), "budget": dataclasses.asdict(budget), "main_setting": main.setting, "shipped_setting": shipped.setting, "token_start": shipped.token_start,
        "zoo": {"dir": str(zoo.root), "recipe_hash": zoo.manifest.get("recipe_hash"), "models": zoo.models,
                "val_targets": zoo.val_targets, "test_targets": zoo.test_targets, "general": zoo.manifest["general"]},
        "methods": {r.name: {"kind": r.kind, "note": r.note, "ptm_forward_passes": r.ptm_passes,
                             "general_forward_passes": r.general_passes, "per_target": r.per_target,
                             "seconds_per_target": r.seconds, "seed_std": r.spread} for r in order},
        "goal": goals.goal_check(by_name, groups["model_spider"], groups["model_spider_rerank3"], groups["forward_baselines"],
                                 groups["static_priors"], zoo.test_targets, next(c["test"]["wtau_paper"] for c in ceiling if c["k"] == 3),
                                 rerank3_kept=weight == 0 and rerank3 == f"{SPIDER} rerank@3"),
        "ablation": ablation, "val_targets_as_tasks": shipped.val_targets_as_tasks, "refit": refit, "refit_probe": last_step.probe_command(zoo.root, out, REPO), "transfergraph": tgraph_info, "bank_retrieval": retrieval_info, "familiarity": {t: f.as_dict() for t, f in familiar.items()},
        "rank_prior": shipped.rank_prior, "rank_prior_weight": prior_weight, "rank_prior_ablation": prior_ablation,
        "ensemble_rank_prior_weight": ens_weight, "ensemble_rank_prior_ablation": ens_ablation,
        "rerank_weight": weight, "rerank_ablation": rerank_ablation, "forward_rerank_ablation": forward_ablation, "rerank_ceiling": ceiling,
        "build": {"stages": costs.build_stages(zoo), "bank": costs.bank_runs(zoo),
                  "ground_truth": costs.run_files(zoo.root / "ground_truth" / "runs")},
        "bank_agreement": costs.bank_agreement(zoo),
        "seed_agreement": costs.seed_agreement(zoo.root / "ground_truth" / "runs", zoo.root / "ground_truth_details.csv",
                                               tuple(zoo.manifest.get("finetune", {}).get("seeds", ()))),
        "extraction_seconds": extraction,
        "extraction_check_max_rel_diff": max(v["max_rel_diff"] for v in timing_cache.values.values()),
        "baseline_errors": forward.baseline_errors(zoo, baselines, baseline_cache) + lgc_errors,
        "reranked_models": {f"rerank@{k}": [dict(zip(zoo.targets, r[k]["models"])) for r in rerank_runs]
                            for k in RERANK_KS},
        "spider_chart": {"axes": axes, "datasets": domains, "learned": dict(zip(zoo.models, learned.tolist())),
                         "truth": dict(zip(zoo.models, truth_axes.tolist()))}, **incremental,
    }
    results["report_seconds"] = time.perf_counter() - started
    write_json_atomic(out / "results.json", results, indent=1)
    write_text_atomic(out / "report.md", render(results, zoo, order, by_name))
    log(f"wrote {out / 'report.md'} in {results['report_seconds']:.0f} s")
    return results


def render(results: dict[str, Any], zoo, order: Sequence, by_name: dict) -> str:
    """report.md from the results (every sentence with a number is computed, none hand-edited)."""
    stage_of = {t: "validation" for t in zoo.val_targets} | {t: "test" for t in zoo.test_targets}
    recipe_targets = {t.id: t for t in zoo.recipe.all_targets}
    targets_md = md.table(
        ["target", "stage", "what", "classes", "labelled images", "PTMs pre-trained on its domain"],
        [[t, stage_of[t], recipe_targets[t].note or recipe_targets[t].source if t in recipe_targets else "",
          zoo.store.entry(zoo.general, t).num_classes, zoo.store.entry(zoo.general, t).num_samples,
          ", ".join(recipe_targets[t].in_domain) if t in recipe_targets else ""] for t in zoo.targets])
    agreement = results["bank_agreement"]
    build, bank = results["build"], results["build"]["bank"]
    bank_line = (f"The fine-tuning bank holds {bank['runs']} runs on {bank['tasks']} pool tasks "
                 f"({md.fmt_seconds(bank['seconds'])} of fine-tuning in total, {md.fmt_seconds(bank['seconds_per_run'])} "
                 "per run)." if bank.get("runs") else "This zoo has no fine-tuning bank.")
    parts = [
        f"# Benchmark report: {zoo.name}",
        "\n> **Quick smoke run** (`--quick`): tiny training budget; the numbers mean nothing.\n" if results["quick"] else "",
        "Generated by one command (do not edit by hand):", f"```bash\n{results['command']}\n```",
        f"- commit: `{results['commit']}`", f"- machine: {results['machine']} (2 shared cores: times carry noise)",
        f"- date: {results['date']}; report run time {results['report_seconds'] / 60:.1f} min",
        f"- zoo: `{zoo.root}` (recipe `{zoo.name}`, hash {results['zoo']['recipe_hash']}): {results['ptms']} PTMs, "
        f"{len(zoo.val_targets)} validation and {len(zoo.test_targets)} test targets",
        f"- Model Spider: the shipped `{zoo.name}` config, {len(results['budget']['seeds'])} seed(s) per setting "
        "(tables: mean over seeds, ± std over seeds of the mean over targets). Label source and prior: "
        f"**{results['main_setting']}**" + rank_prior.chosen_weights(results) + ", chosen by the ablations below on the validation targets; model tokens start " + results.get("token_start", "at random") + ". "
        "Every decision is made on validation targets; test targets are reported, never used to decide. An ablation's 'val wins': how often a setting has the best validation mean when the validation targets are drawn again with replacement (2,000 draws; `spider.benchmark.methods.win_shares`): how firmly the targets make that decision. " f"Each ablation keeps the shipped config's setting unless the best one beats it in at least {FIRM_SHARE:.0%} of such draws (the two compared alone; `spider.benchmark.methods.pick_winner`): the report measures what users get, and a choice the validation targets cannot make firmly does not follow their noise.",
        "", "## Targets", targets_md, "",
        "Ground truth: each PTM fine-tuned end to end on the target's train split, accuracy on a held-out test "
        "split (`ground_truth.csv`). Every method ranks the PTMs from the same train split.",
        "", "## Goal check (test targets)", *results["goal"]["text"],
        "", "All goals met." if results["goal"]["all_met"] else "Not every goal is met; the tables below are the evidence.",
    ]
    for stage, targets in (("Test", zoo.test_targets), ("Validation", zoo.val_targets)):
        if not targets:
            parts += ["", f"## {stage} targets: none declared by this recipe"]
            continue
        parts += ["", f"## {stage} targets", "`wtau_paper` = `scipy.stats.weightedtau(truth, pred, rank=None)` "
                  "(the paper's protocol), `wtau_symmetric` = scipy's `rank=True`. `rerank@k`: the top k of the "
                  "main Model Spider ranking re-scored by a re-ranker with the k PTMs' own "
                  "features, fused with the main scores (weight chosen on the validation targets: see the re-ranking ablation), "
                  "so a re-scored PTM may also move down; its scores are ranks. Top-1 regret: accuracy points lost by fine-tuning the PTM ranked "
                  "first instead of the best (lower is better)."]
        for metric in METRICS:
            key = "test" if stage == "Test" else "val"
            parts += ["", f"### {stage}: {metric}", md.metric_table(order, targets, metric, key)]
    parts += [
        "", "## Cost of one selection (mean over test targets)",
        "Extraction = forward passes over the target's labelled images (re-timed here, model loading excluded; "
        f"re-extracted features differ from the stored ones by at most {results['extraction_check_max_rel_diff']:.1e} "
        f"relative); scoring = the baseline(s) on those features, Model Spider's scorer (+ re-scoring of the top k), "
        f"or a static prior's scores. A forward-based method needs all {results['ptms']} PTMs' features.",
        "", md.cost_table(order, zoo.test_targets, by_name[AGGREGATE]), "", "![quality vs time](efficiency.png)",
        "", "## One-off costs: building the zoo", "Stages of the zoo's last build (`zoo.json`), the fine-tuning bank "
        "included; paid once per zoo, not per target. `zoo.json` records the last build command only (a resumed build "
        "shows reused items at no cost); the fine-tuning runs' own files give the full cost of the ground truth and "
        "the bank.", "", md.build_cost_table(build["stages"], bank, build["ground_truth"]), "", bank_line,
        "", "## Fine-tuning bank: protocol agreement",
        "The bank fine-tunes once (lr 3e-3, seed 0); the ground truth picks the learning rate on a validation split "
        "and averages seeds. Weighted tau (paper protocol) of the single run's ranking against the full protocol on "
        "each target:", "",
        md.table([*[k for k in agreement if k != "mean"], "**mean**"], [[md.fmt(v) for v in agreement.values()]])
        if len(agreement) > 1 else "No target has runs at lr 3e-3, seed 0.",
        "", "## Ground-truth seed agreement",
        "The ground truth's own noise: weighted tau (`wtau_symmetric`: neither run is the truth) between the PTM "
        "rankings of two fine-tuning seeds at each pair's selected learning rate. A method's wtau_paper against "
        "the two-seed mean is limited by noise of this size, most on the targets where it is low.", "",
        md.table([*[k for k in results["seed_agreement"] if k != "mean"], "**mean**"],
                 [[md.fmt(v) for v in results["seed_agreement"].values()]])
        if results["seed_agreement"] else "The ground truth has one seed: its seed noise is not measured.",
        "", "## Label-source ablation", "Model Spider with general tokens trained on each label source, with and "
        f"without the `{PRIOR}` prior. The choice is made on the validation targets' mean wtau_paper (the shipped `{results['shipped_setting']}` "
        "stays unless beaten firmly); only the chosen setting's test score is looked at (the main Model Spider row above, before the last step where the config takes it).", "",
        md.ablation_table([e for e in results["ablation"] if "skipped" not in e]),
        *[f"- skipped {e['setting']}: {e['skipped']}" for e in results["ablation"] if "skipped" in e],
        *rank_prior.section(results), *last_step.section(results),
        "", "## Re-ranking ablation: fusion weight",
        f"`rerank@3` with each weight w of the re-rankers' specific scores (a re-scored PTM's score is (1 - w) x its "
        f"main-ranking z-score + w x its specific z-score; w = 0 keeps the main ranking). The choice on the validation "
        f"targets' mean wtau_paper (w = {results['rerank_weight']:g}) is used for every `rerank@k` row; only its test "
        "score is looked at.", "", md.ablation_table(results["rerank_ablation"]),
        *forward.rerank_section(results["forward_rerank_ablation"], results["groups"]["model_spider_rerank3"], results["rerank_ceiling"]),
        "", "## Spider charts: what the learned tokens say each PTM is good at",
        "Sampled tasks of each dataset scored by the shipped main scorer (seed 0): a PTM's value is its mean percentile rank "
        "(1 = always first), datasets grouped by source domain (`spider.zoo.domains`; * = the pool datasets of that "
        "domain, the others are targets); black dots: true percentile rank on the targets of that domain.",
        "", "![spider charts](spider_charts.png)", *leave_one_out.section(results.get("incremental")),
    ]
    errors = results["baseline_errors"]
    parts += ["", "## Notes", f"- Baseline failures (NaN: the PTM is ranked last for that target, as a user of the method would never pick it): {len(errors)}"
              + ("" if not errors else "; " + "; ".join(errors[:10])),
              "- Re-ranked PTMs (top 3, seed 0): " + "; ".join(
                  f"{t}: {', '.join(m)}" for t, m in results["reranked_models"]["rerank@3"][0].items()),
              *(["- LGC was not run (`--no-lgc`): it back-propagates through every PTM on every target, "
                 "about 10x a forward baseline's time (the mini-zoo report has its row)."] if results["lgc_skipped"] else []),
              f"- {by_name['transfergraph'].note}; grid of {len(results['transfergraph']['settings'])} settings.",
              f"- bank_retrieval: {by_name['bank_retrieval'].note}; validation wtau_paper by k: " + ", ".join(
                  f"{e['setting']} {md.fmt(e['val'].get('wtau_paper'))}" for e in results["bank_retrieval"]["settings"]),
              retrieval.familiarity_note(results["familiarity"]), "- Raw numbers: [results.json](results.json)."]
    return "\n".join(parts) + "\n"


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/minizoo/report.py", description=__doc__.split("\n")[0])
    parser.add_argument("--zoo-dir", default=str(REPO / "artifacts" / "minizoo"), help="built zoo folder")
    parser.add_argument("--out", default=str(HERE), help="where report.md, results.json and the PNGs go")
    parser.add_argument("--work-dir", default=None, help="intermediate results (default artifacts/<zoo>-report)")
    parser.add_argument("--data-dir", default=None, help="shared data folder (default SPIDER_DATA_DIR)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training budget")
    parser.add_argument("--seeds", type=int, default=len(Budget().seeds), choices=range(1, 10), metavar="N",
                        help="seeds per ablation setting and number of seed ensembles (default %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first")
    parser.add_argument("--no-lgc", action="store_true", help="leave LGC out (per-sample gradients of every PTM)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every timed stage")
    args = parser.parse_args(argv)
    args.command_line = " ".join(["python experiments/minizoo/report.py", *(sys.argv[1:] if argv is None else argv)])
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
