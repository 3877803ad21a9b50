"""``experiments/minizoo/report.py``: metric helpers, the goal verdicts, and the end-to-end report."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest

from spider import paths


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


def test_rank_values_sort_like_the_order():
    values = report._rank_values([2, 0, 1], 3)
    assert np.argsort(-values).tolist() == [2, 0, 1]


def test_task_metrics_perfect_reversed_and_nan():
    truth = np.array([[90.0, 80.0, 70.0, 60.0]])
    perfect = report.task_metrics(truth, truth * 2)
    assert perfect["wtau_paper"][0] == pytest.approx(1.0)
    assert perfect["wtau_symmetric"][0] == pytest.approx(1.0)
    assert perfect["top1_regret"][0] == 0.0
    reversed_ = report.task_metrics(truth, -truth)
    assert reversed_["wtau_paper"][0] == pytest.approx(-1.0)
    assert reversed_["top1_regret"][0] == pytest.approx(30.0)
    # A failed baseline (NaN) on the best model leaves it out instead of ranking it last.
    with_nan = report.task_metrics(truth, np.array([[np.nan, 3.0, 2.0, 1.0]]))
    assert with_nan["wtau_paper"][0] == pytest.approx(1.0)


def _row(name, kind, wtau, seconds, passes):
    metrics = {m: np.array([wtau, wtau]) for m in ("wtau_paper", "wtau_symmetric")}
    metrics["top1_regret"] = np.array([1.0, 2.0])
    t = np.array([seconds, seconds])
    return report.MethodResult(name, kind, metrics, t, t / 2, t / 2, passes, 0 if kind != "spider" else 1)


def _rows(general, rerank3, best=0.5, copeland=0.55):
    spider = report.SPIDER
    rows = {"logme": _row("logme", "baseline", best, 10.0, 20), "leep": _row("leep", "baseline", best - 0.1, 9.0, 20),
            "nce": _row("nce", "baseline", 0.2, 9.0, 20), "hscore": _row("hscore", "baseline", 0.1, 9.0, 20),
            "copeland": _row("copeland", "aggregate", copeland, 12.0, 20),
            f"{spider} general": _row(f"{spider} general", "spider", general, 0.5, 0),
            f"{spider} rerank@3": _row(f"{spider} rerank@3", "spider", rerank3, 2.0, 3)}
    return rows


def test_goal_check_says_yes_and_no_plainly():
    baselines = ["logme", "leep", "nce", "hscore"]
    ablations = {"seeds": [0], "studies": {}}
    win = report.goal_check(_rows(general=0.6, rerank3=0.7), baselines, ablations)
    assert win["general_beats_best_single"] and win["rerank3_beats_copeland"]
    assert win["best_single_baseline"] == "logme"
    assert "**Yes**" in win["text"][0] and "**Yes**" in win["text"][1]
    assert win["general_time_fraction"] == pytest.approx(0.05)
    lose = report.goal_check(_rows(general=0.4, rerank3=0.5), baselines, ablations)
    assert not lose["general_beats_best_single"] and not lose["rerank3_beats_copeland"]
    assert "**No**" in lose["text"][0] and "does not beat" in lose["text"][1]


def test_missing_zoo_is_a_one_line_error(tmp_path, capsys):
    assert report.main(["--zoo-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --zoo-dir") and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_quick_report_on_the_tiny_zoo(tmp_path, data_dir):
    from spider.pipeline.build import build_zoo

    zoo = tmp_path / "tiny"
    build_zoo("tiny", zoo, data_dir=data_dir, workers=1, progress=False, log=lambda *a: None)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--zoo-dir", str(zoo), "--out", str(out), "--work-dir", str(work), "--data-dir", str(data_dir),
            "--quick"]
    assert report.main(args) == 0
    for name in ("report.md", "results.json", "efficiency.png", "spider_charts.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    text = (out / "report.md").read_text()

    methods = [*report.QUICK.baselines, "copeland", "copeland (all baselines)", "model_spider general",
               "model_spider re-ranker, general tokens", "model_spider rerank@1", "model_spider rerank@3",
               "model_spider rerank@5"]
    assert list(results["methods"]) == methods
    targets = results["zoo"]["targets"]
    for method in methods:
        entry = results["methods"][method]
        assert set(entry["per_target"]["wtau_paper"]) == set(targets)
        assert entry["seconds"]["total"] > 0
        # one row per method in each of the 3 metric tables and the cost table
        assert text.count(f"| {method} |") == 4, method
    assert results["methods"]["copeland"]["ptm_forward_passes"] == len(results["zoo"]["models"])
    assert results["methods"]["model_spider general"]["ptm_forward_passes"] == 0
    assert results["methods"]["model_spider rerank@1"]["ptm_forward_passes"] == 1
    assert set(results["ablations"]["studies"]) == {"ranking loss", "training tasks", "general encoder"}
    assert all(len(v) >= 2 for v in results["ablations"]["studies"].values())
    assert "## Goal check" in text and ("**Yes**" in text or "**No**" in text)
    assert math.isfinite(results["methods"]["copeland"]["mean"]["wtau_paper"])

    # A second run reuses the work folder (timings, baselines, scorers) and gives the same table.
    before = results["methods"]["model_spider general"]["mean"]
    assert report.main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["model_spider general"]["mean"] == before
