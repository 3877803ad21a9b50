"""``spider.benchmark.leave_one_out``: per-PTM and mean numbers of a small hand-made ``incremental.json``,
and the report section rendered from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spider.benchmark import leave_one_out as loo
from spider.benchmark.inputs import ReportError, Zoo


def seconds(extract, bank, labels, train):
    return {"extract": extract, "bank": bank, "labels": labels, "train": train,
            "total": extract + bank + labels + train}


def incremental_json() -> dict:
    """2 held-out PTMs, 1 validation and 2 test targets; the full retrain is one run for both."""
    full_wtau = {"v": 0.5, "t1": 0.2, "t2": 0.4}
    return {"config": "fake", "val_targets": ["v"], "test_targets": ["t1", "t2"],
            "full": {"train_seconds": 40.0, "wtau": full_wtau, "rank_error": {}},
            "held_out": {
                "a": {"from_scratch": True, "train19_seconds": 30.0,
                      "add": {"seconds": seconds(100.0, 200.0, 20.0, 10.0)},
                      "incremental": {"wtau": {"v": 0.7, "t1": 0.6, "t2": 0.2},
                                      "rank_error": {"v": 1, "t1": 2, "t2": 3}},
                      "full": {"wtau": full_wtau, "rank_error": {"v": 0, "t1": 0, "t2": 3}}},
                "b": {"from_scratch": False, "train19_seconds": 50.0,
                      "add": {"seconds": seconds(0.0, 0.0, 30.0, 20.0)},
                      "incremental": {"wtau": {"v": 0.3, "t1": 0.4, "t2": 0.4},
                                      "rank_error": {"v": 5, "t1": 4, "t2": 6}},
                      "full": {"wtau": full_wtau, "rank_error": {"v": 3, "t1": 3, "t2": 3}}}}}


def test_ptm_means_average_over_the_stage_targets():
    a = loo.ptm_means(incremental_json(), "a")
    assert a["incremental"] == pytest.approx({"wtau_val": 0.7, "wtau_test": 0.4, "rank_error": 2.0})
    assert a["full"] == pytest.approx({"wtau_val": 0.5, "wtau_test": 0.3, "rank_error": 1.0})
    assert a["seconds"]["total"] == 330.0 and a["retrain_seconds"] == 30.0 and a["from_scratch"] is True
    assert loo.ptm_means(incremental_json(), "b")["from_scratch"] is False


def test_rows_without_the_flag_count_as_from_scratch():
    results = incremental_json()
    del results["held_out"]["b"]["from_scratch"]
    assert loo.summarise(results)["from_scratch"] == ["a", "b"]


def test_summary_means_over_the_held_out_ptms():
    s = loo.summarise(incremental_json())
    assert s["held_out"] == 2 and s["models"] == ["a", "b"] and s["from_scratch"] == ["a"]
    assert s["incremental"] == pytest.approx({"wtau_val": 0.5, "wtau_test": 0.4, "rank_error": 3.5})
    assert s["full"] == pytest.approx({"wtau_val": 0.5, "wtau_test": 0.3, "rank_error": 2.0})
    assert s["seconds"] == pytest.approx(seconds(50.0, 100.0, 25.0, 15.0))
    # Only the PTM added from scratch paid for its features and bank runs.
    assert s["seconds_from_scratch"] == pytest.approx(seconds(100.0, 200.0, 20.0, 10.0))
    assert s["full_train_seconds"] == 40.0 and s["retrain_seconds"] == 40.0
    results = incremental_json()
    results["held_out"]["a"]["from_scratch"] = False
    assert loo.summarise(results)["seconds_from_scratch"] is None


def fake_zoo(root, models=("a", "b", "c"), val=("v",), test=("t1", "t2")) -> Zoo:
    return Zoo(root, {"recipe": "fake"}, None, None, list(models), list(val), list(test), "general",
               np.zeros((len(val) + len(test), len(models))), None)


def test_results_entry_reads_the_file_and_is_empty_without_one(tmp_path):
    path = tmp_path / "incremental.json"
    assert loo.results_entry(path, fake_zoo(tmp_path)) == {}
    path.write_text(json.dumps(incremental_json()))
    entry = loo.results_entry(path, fake_zoo(tmp_path))
    assert entry == {"incremental": loo.summarise(incremental_json())}
    json.dumps(entry, allow_nan=False)  # goes into results.json as is


@pytest.mark.parametrize("zoo_args, message", [
    ({"val": ("v", "w")}, "field val_targets is ['v'], expected this zoo's ['v', 'w']"),
    ({"test": ("t2", "t1")}, "field test_targets is ['t1', 't2']"),
    ({"models": ("a", "c")}, "held-out PTMs ['b'] are not PTMs of the zoo"),
])
def test_a_measurement_of_another_zoo_is_an_error(tmp_path, zoo_args, message):
    path = tmp_path / "incremental.json"
    path.write_text(json.dumps(incremental_json()))
    with pytest.raises(ReportError, match=r"^\S*incremental.json: ") as info:
        loo.results_entry(path, fake_zoo(tmp_path, **zoo_args))
    assert message in str(info.value)


def test_section_renders_the_means():
    assert loo.section(None) == []
    lines = loo.section(loo.summarise(incremental_json()))
    text = "\n".join(lines)
    assert "## Adding a PTM without retraining (leave-one-PTM-out)" in lines
    assert "| h added incrementally | 0.500 | 0.400 | 3.50 | 15.0 |" in lines
    assert "| full retrain | 0.500 | 0.300 | 2.00 | 40.0 |" in lines
    assert "from scratch (1 PTM(s)): 330 s (extract 100 / bank 200 / labels 20 / train 10.0)" in text
    assert "took 40.0 s (mean) vs 15.0 s for h's token" in text
    assert "2 held-out PTMs" in text and "`a`, `b`" in text
    results = incremental_json()
    results["held_out"]["a"]["from_scratch"] = False
    assert "no PTM was added from scratch" in "\n".join(loo.section(loo.summarise(results)))
