"""Hostile ``incremental.json`` files given to the benchmark report (``spider.benchmark.leave_one_out``):
each must end in one ReportError line naming the file and the field, never in a mean of garbage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spider.benchmark import leave_one_out as loo
from spider.benchmark.inputs import ReportError, Zoo


def valid() -> dict:
    wtau = {"v": 0.5, "t": 0.2}
    seconds = {"extract": 1.0, "bank": 2.0, "labels": 3.0, "train": 4.0, "total": 10.0}
    return {"val_targets": ["v"], "test_targets": ["t"], "full": {"train_seconds": 40.0},
            "held_out": {"a": {"train19_seconds": 5.0, "add": {"seconds": seconds},
                               "incremental": {"wtau": wtau, "rank_error": {"v": 1, "t": 2}},
                               "full": {"wtau": wtau, "rank_error": {"v": 0, "t": 1}}}}}


def zoo(root) -> Zoo:
    return Zoo(root, {"recipe": "fake"}, None, None, ["a"], ["v"], ["t"], "general", np.zeros((2, 1)), None)


def write(tmp_path, data) -> str:
    path = tmp_path / "incremental.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def error(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ReportError) as info:
        loo.results_entry(path, zoo(tmp_path))
    message = str(info.value)
    assert message.startswith(path) and "\n" not in message
    return message


def test_the_valid_file_reads(tmp_path):
    assert loo.results_entry(write(tmp_path, valid()), zoo(tmp_path))["incremental"]["held_out"] == 1


@pytest.mark.parametrize("text", ["not json", "", "\xff\xfe"])
def test_unreadable_json(tmp_path, text):
    assert "not a readable JSON file" in error(tmp_path, text)


@pytest.mark.parametrize("value", [math.nan, math.inf, "0.5", None, True, [0.5]])
def test_non_numbers_are_rejected(tmp_path, value):
    data = valid()
    data["held_out"]["a"]["incremental"]["wtau"]["t"] = value
    text = json.dumps(data).replace("Infinity", "1e999")  # an overflowing literal parses to inf as well
    assert "(held_out.a): field incremental.wtau.t must be a finite number" in error(tmp_path, text)


@pytest.mark.parametrize("path, field", [
    (["held_out", "a", "full", "rank_error", "t"], "(held_out.a): field full.rank_error.t missing"),
    (["held_out", "a", "add", "seconds", "train"], "field add.seconds.train missing"),
    (["full", "train_seconds"], "field full.train_seconds missing"),
    (["held_out", "a", "train19_seconds"], "(held_out.a): field train19_seconds missing"),
    (["test_targets"], "field test_targets missing"),
])
def test_missing_fields_are_named(tmp_path, path, field):
    data = valid()
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    assert field in error(tmp_path, data)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(held_out={}), "held_out must map at least one"),
    (lambda d: d.update(held_out=["a"]), "held_out must map at least one"),
    (lambda d: d.update(val_targets=[]), "val_targets must be a non-empty list"),
    (lambda d: d.update(val_targets="v"), "val_targets must be a non-empty list"),
    (lambda d: d["held_out"]["a"].update(from_scratch="yes"), "held_out.a.from_scratch must be true or false"),
    (lambda d: d["held_out"]["a"].update(incremental=[1, 2]), "field incremental.wtau missing"),
])
def test_wrong_shapes_are_named(tmp_path, mutate, expected):
    data = valid()
    mutate(data)
    assert expected in error(tmp_path, data)


def test_a_top_level_list_is_rejected(tmp_path):
    assert "field held_out missing" in error(tmp_path, [1, 2])
