"""``experiments/minizoo/report.py``: bad input, and the whole report end to end (``--quick``) on the
``tiny`` recipe built from the real data, with the ``results.json`` schema of the quality issue."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys

import pytest

from spider import paths
from spider.datamodules.label_sources import LABEL_SOURCES

METRIC_KEYS = {"wtau_paper", "wtau_symmetric", "top1_regret", "seconds_per_target"}


def load_report():
    name = "minizoo_report"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, paths.REPO_ROOT / "experiments" / "minizoo" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


report = load_report()


def test_missing_zoo_is_a_one_line_error(tmp_path, capsys):
    assert report.main(["--zoo-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --zoo-dir") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_report_script_is_orchestration_only():
    lines = (paths.REPO_ROOT / "experiments" / "minizoo" / "report.py").read_text().count("\n")
    assert lines < 400, lines


@pytest.mark.slow
@pytest.mark.shared_data
def test_quick_report_on_the_tiny_zoo(tmp_path, data_dir, monkeypatch):
    from spider.benchmark import training
    from spider.pipeline.build import build_zoo

    real_fit_config = training.fit_config

    def with_rank_prior(*args, **options):  # the tiny config ships none: the report's rank-prior path runs too
        cfg = real_fit_config(*args, **options)
        if cfg.model.prior is None:
            cfg.data.rank_prior, cfg.data.rank_prior_weight = "label_mean", 0.5
        return cfg

    real_shipped = training.shipped_settings
    monkeypatch.setattr(training, "fit_config", with_rank_prior)
    # ... and the last step (the mini zoo's): refits on the validation targets rank the test targets.
    monkeypatch.setattr(report, "shipped_settings", lambda zoo: dataclasses.replace(
        real_shipped(zoo), rank_prior="label_mean", rank_prior_weight=0.5, val_targets_as_tasks=1))

    zoo = tmp_path / "tiny"
    build_zoo("tiny", zoo, data_dir=data_dir, workers=1, progress=False, log=lambda *a: None)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--zoo-dir", str(zoo), "--out", str(out), "--work-dir", str(work), "--data-dir", str(data_dir),
            "--quick"]
    # A leave-one-PTM-out measurement next to the report (what experiments/minizoo/incremental.py writes).
    data = json.loads((zoo / "zoo.json").read_text())["data"]
    targets = data["val_datasets"] + data["test_datasets"]
    placement = {"wtau": dict.fromkeys(targets, 0.5), "rank_error": dict.fromkeys(targets, 1)}
    seconds = dict.fromkeys(("extract", "bank", "labels", "train", "total"), 1.0)
    out.mkdir()
    (out / "incremental.json").write_text(json.dumps({
        "val_targets": data["val_datasets"], "test_targets": data["test_datasets"], "full": {"train_seconds": 9.0},
        "held_out": {data["models"][0]: {"add": {"seconds": seconds}, "train19_seconds": 8.0, "incremental": placement,
                                         "full": placement}}}))
    assert report.main(args) == 0
    for name in ("report.md", "results.json", "efficiency.png", "spider_charts.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    text = (out / "report.md").read_text()

    # The last step: both main rows before and after it, on the test targets only.
    assert results["val_targets_as_tasks"] == 1 and "## Last step: the validation targets as training tasks" in text
    assert [e["row"] for e in results["refit"]] == ["model_spider general", "model_spider ensemble"]
    for entry in results["refit"]:
        assert entry["wtau_paper_refit"] == pytest.approx(results["test"][entry["row"]]["wtau_paper"])
        assert all(math.isfinite(v) for k, v in entry.items() if k != "row")
    assert list((work / "runs").glob("token-*-valtasks1-seed0"))  # the refit trained beside the bank-only fit

    # The schema of the quality issue.
    assert results["recipe"] == "tiny" and results["ptms"] == len(results["zoo"]["models"])
    groups = results["groups"]
    assert set(groups) >= {"model_spider", "model_spider_rerank3", "forward_baselines", "static_priors"}
    assert groups["forward_baselines"] == [*report.QUICK.baselines, "copeland"]
    assert {"finetune_mean", "label_mean", "param_count"} <= set(groups["static_priors"])
    methods = [groups["model_spider"], groups["model_spider_rerank3"], *groups["forward_baselines"],
               *groups["static_priors"]]
    for stage in ("val", "test"):
        assert set(methods) <= set(results[stage]), stage
        for method in methods:
            assert set(results[stage][method]) == METRIC_KEYS
            assert math.isfinite(results[stage][method]["seconds_per_target"])
    assert math.isfinite(results["test"]["copeland"]["wtau_paper"])
    assert set(results["test"]["lgc"]) == METRIC_KEYS and math.isfinite(results["test"]["lgc"]["wtau_paper"])
    assert results["methods"]["lgc"]["ptm_forward_passes"] == results["ptms"] and text.count("| lgc |") == 7
    # Every method has a row in the 3 metric tables of both stages and in the cost table.
    for method in methods:
        assert text.count(f"| {method} |") == 7, method
    # TransferGraph: its row in every table, hyperparameters chosen on the validation targets.
    assert text.count("| transfergraph |") == 7 and set(results["test"]["transfergraph"]) == METRIC_KEYS
    chosen = max(results["transfergraph"]["settings"], key=lambda s: s["val"]["wtau_paper"])
    assert results["transfergraph"]["chosen"] == chosen["hparams"]
    # Bank retrieval (nothing trained): its row everywhere, k chosen on the validation targets.
    assert text.count("| bank_retrieval |") == 7 and set(results["test"]["bank_retrieval"]) == METRIC_KEYS
    chosen_k = max(results["bank_retrieval"]["settings"], key=lambda s: s["val"]["wtau_paper"])["setting"]
    assert chosen_k == f"k = {results['bank_retrieval']['chosen_k']}"
    assert results["val"]["bank_retrieval"]["wtau_paper"] == pytest.approx(
        max(s["val"]["wtau_paper"] for s in results["bank_retrieval"]["settings"]))
    entry = results["methods"]
    assert entry["bank_retrieval"]["ptm_forward_passes"] == 0
    assert entry["copeland"]["ptm_forward_passes"] == results["ptms"]
    assert entry["model_spider general"]["ptm_forward_passes"] == 0
    assert entry["finetune_mean"]["ptm_forward_passes"] == 0

    # The ablation: every label source with and without the prior; one chosen on validation (the
    # best, or the shipped setting when the best does not beat it firmly), only its test number looked at.
    trained = [e for e in results["ablation"] if "skipped" not in e]
    assert len(results["ablation"]) == 2 * len(LABEL_SOURCES) and len(trained) >= 1
    assert {e["setting"] for e in results["ablation"]} >= {"finetune_nll", "finetune_nll + prior finetune_mean"}
    winners = [e for e in trained if e["winner"]]
    assert len(winners) == 1 and winners[0]["setting"] == results["main_setting"]
    assert all(e["test"] is None for e in trained if not e["winner"])
    best = max(trained, key=lambda e: e["val"]["wtau_paper"])
    assert winners[0] is best or winners[0]["setting"] == results["shipped_setting"]
    assert results["test"]["model_spider general"]["wtau_paper"] == pytest.approx(winners[0]["test"]["wtau_paper"])

    # The re-ranking ablation: every fusion weight, one winner (on validation) used by the rerank@k rows.
    reranking = results["rerank_ablation"]
    assert len(reranking) == len(report.RERANK_WEIGHTS)
    assert [e["winner"] for e in reranking].count(True) == 1
    chosen = next(e for e in reranking if e["winner"])
    assert chosen["setting"].startswith(f"w = {results['rerank_weight']:g}")
    assert chosen is max(reranking, key=lambda e: e["val"]["wtau_paper"]) or "(config)" in chosen["setting"]
    assert all(e["test"] is None for e in reranking if not e["winner"])
    assert results["val"]["model_spider rerank@3"]["wtau_paper"] == pytest.approx(chosen["val"]["wtau_paper"])
    assert "## Re-ranking ablation: fusion weight" in text
    # How firmly the validation targets decide: win shares over resampled targets, one per ablation.
    # The rank prior's weight, chosen on validation for single scorers and, apart, for seed ensembles
    # (tried first: the single scorers' choice, as the tiny config names no ensemble weight).
    for key, row in (("rank_prior", "model_spider general"), ("ensemble_rank_prior", "model_spider ensemble")):
        ablation = results[f"{key}_ablation"]
        assert [e["winner"] for e in ablation].count(True) == 1, key
        chosen = next(e for e in ablation if e["winner"])
        assert chosen["setting"].split(" (")[0] == f"w = {results[f'{key}_weight']:g}"
        assert results["val"][row]["wtau_paper"] == pytest.approx(chosen["val"]["wtau_paper"])
        assert chosen is max(ablation, key=lambda e: e["val"]["wtau_paper"]) or chosen is ablation[0]  # shipped: first
    first = results["ensemble_rank_prior_ablation"][0]["setting"]
    assert first.split(" (")[0] == f"w = {results['rank_prior_weight']:g}" and first.endswith("(single scorers')")
    assert "Seed ensembles of 2 scorers" in text and "-seed ensembles)" in text.split("## Targets")[0]
    for ablation in (trained, reranking, results["rank_prior_ablation"], results["ensemble_rank_prior_ablation"]):
        assert math.isclose(sum(e["val_win_share"] for e in ablation), 1.0, abs_tol=1e-9)
    assert "val wins (targets resampled)" in text

    # Forward re-ranking: per k, one winner on validation among every (baseline, weight); its row in
    # every table, its time = the main ranking's + the k PTMs' extraction and baseline scores.
    from spider.benchmark import forward

    fwd = results["forward_rerank_ablation"]
    candidates = min(forward.RERANK_CANDIDATES, len(report.QUICK.baselines))
    assert len(fwd) == len(forward.RERANK_KS) * candidates * len(forward.RERANK_WEIGHTS)
    assert [e["winner"] for e in fwd].count(True) == len(forward.RERANK_KS)
    assert all(e["test"] is None for e in fwd if not e["winner"])
    for k in forward.RERANK_KS:
        label = "every PTM" if k == 0 else str(k)
        entries = [e for e in fwd if e["setting"].startswith(f"top {label}:")]
        best = max(entries, key=lambda e: e["val"]["wtau_paper"])
        assert best["winner"]
        baseline = best["setting"].split(": ")[1].split(",")[0]
        name = f"model_spider + {baseline} " + ("(every PTM)" if k == 0 else f"top {k}")
        assert text.count(f"| {name} |") == 7, name
        assert results["val"][name]["wtau_paper"] == pytest.approx(best["val"]["wtau_paper"])
        passes = results["ptms"] if k == 0 else min(k, results["ptms"])
        assert results["methods"][name]["ptm_forward_passes"] == passes
        assert results["test"][name]["seconds_per_target"] > results["test"][groups["model_spider"]]["seconds_per_target"]
    # The ceiling of top-k re-ranking: k = 0 is the main ranking; ordering its top k by the truth never hurts.
    ceiling = results["rerank_ceiling"]
    assert [c["k"] for c in ceiling] == [0, *forward.CEILING_KS] and "## Ceiling of top-k re-ranking" in text
    assert ceiling[0]["val"]["wtau_paper"] == pytest.approx(results["val"][groups["model_spider"]]["wtau_paper"])
    assert all(c["val"]["top1_regret"] <= ceiling[0]["val"]["top1_regret"] for c in ceiling)
    assert "Ceiling: ordering the main ranking's top 3" in text
    rerank3 = groups["model_spider_rerank3"]
    assert rerank3 in {"model_spider rerank@3"} | {n for n in results["val"] if n.endswith(" top 3")}
    assert results["val"][rerank3]["wtau_paper"] == max(
        results["val"][n]["wtau_paper"] for n in results["val"] if n == "model_spider rerank@3" or n.endswith(" top 3"))
    assert "## Forward re-ranking ablation: baseline, k and weight" in text

    assert results["incremental"]["held_out"] == 1 and results["incremental"]["full_train_seconds"] == 9.0
    assert "## Adding a PTM without retraining (leave-one-PTM-out)" in text and "| full retrain | 0.500 |" in text
    assert {s["name"] for s in results["build"]["stages"]} >= {"groundtruth", "bank"}
    assert results["build"]["bank"]["runs"] > 0
    assert "## Goal check (test targets)" in text and ("**met**" in text or "**not met**" in text)
    assert set(results["goal"]["goals"]) == {"general_vs_forward", "general_vs_prior", "rerank3_vs_both",
                                             "lowest_regret", "time_fraction"}

    # A second run reuses the work folder (timings, baselines, scorers) and gives the same numbers.
    assert report.main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["test"]["model_spider general"]["wtau_paper"] == results["test"]["model_spider general"]["wtau_paper"]
    assert again["extraction_seconds"] == results["extraction_seconds"]

    # --no-lgc: the same report without LGC's row, saying so (the other rows come from the caches).
    out2 = tmp_path / "out-no-lgc"
    assert report.main([*args[:2], "--out", str(out2), *args[4:], "--no-lgc"]) == 0
    skipped, text2 = json.loads((out2 / "results.json").read_text()), (out2 / "report.md").read_text()
    assert skipped["lgc_skipped"] and "lgc" not in skipped["test"] and "| lgc |" not in text2
    assert "LGC was not run (`--no-lgc`)" in text2 and "incremental" not in skipped
    assert skipped["test"]["gbc"] == results["test"]["gbc"]
