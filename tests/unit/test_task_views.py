"""``experiments/zoo40/task_views.py``: the anchor rule, and the joined views the fits read."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from spider import paths
from spider.store import FeatureStore, StoreError

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import probes  # noqa: E402
import task_views  # noqa: E402

COST = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 90.0, "f": 100.0}
DOMAINS = {"a": ("digits",), "b": ("digits",), "c": ("faces",), "d": ("digits", "photos"), "e": ("signs",), "f": ("x",)}


def test_anchors_are_the_cheapest_of_new_domain_sets_within_the_budget():
    # total 200, budget 5 % = 10; the general encoder costs 1: a (1), not b (digits again), c (3),
    # d (4: a set of domains no anchor has) -> 9; e would pass 10.
    assert task_views.pick_anchors(list(COST), COST, 1.0, DOMAINS, budget=0.05) == ["a", "c", "d"]


def test_no_anchor_fits_when_the_general_encoder_spends_the_budget():
    assert task_views.pick_anchors(list(COST), COST, 10.0, DOMAINS, budget=0.05) == []


def _zoo(tmp_path, rng, shuffle_b=False):
    store = FeatureStore(tmp_path / "store")
    ids = np.arange(6)
    labels = np.array([0, 0, 1, 1, 2, 2])
    for model, dim, scale in (("general", 3, 10.0), ("b", 2, 0.1)):
        for dataset in ("pool0", "target"):
            order = ids[::-1] if shuffle_b and model == "b" and dataset == "target" else ids
            store.write(model, dataset, features=scale * (1 + rng.random((6, dim))), labels=labels,
                        sample_ids=order, class_names=["x", "y", "z"])
    zoo = SimpleNamespace(store=store, general="general", recipe=SimpleNamespace(pool=[SimpleNamespace(id="pool0")]))
    return SimpleNamespace(zoo=zoo), store


def test_views_are_joined_side_by_side_each_of_unit_mean_norm_on_the_pool(tmp_path):
    p, store = _zoo(tmp_path, np.random.default_rng(0))
    probes._write_views(p, ["general", "b"], tmp_path / "alt")
    alt = FeatureStore(tmp_path / "alt")
    for dataset in ("pool0", "target"):
        joined = alt.entry("general", dataset).features()
        g, b = (store.entry(m, dataset).features() for m in ("general", "b"))
        assert joined.shape == (6, 5)
        np.testing.assert_allclose(joined[:, :3] * np.linalg.norm(store.entry("general", "pool0").features(), axis=1).mean(), g, rtol=1e-5)
        np.testing.assert_allclose(joined[:, 3:] * np.linalg.norm(store.entry("b", "pool0").features(), axis=1).mean(), b, rtol=1e-5)
        np.testing.assert_array_equal(alt.entry("general", dataset).labels(), store.entry("general", dataset).labels())
    np.testing.assert_allclose(np.linalg.norm(alt.entry("general", "pool0").features()[:, 3:], axis=1).mean(), 1.0, rtol=1e-5)


def test_views_of_other_samples_are_refused(tmp_path):
    p, _ = _zoo(tmp_path, np.random.default_rng(0), shuffle_b=True)
    with pytest.raises(StoreError, match="samples differ"):
        probes._write_views(p, ["general", "b"], tmp_path / "alt")


PROBE_REPORTS = sorted(p for d in ("zoo40", "minizoo") for p in (paths.REPO_ROOT / "experiments" / d).glob("*.md")
                       if "experiments/zoo40/" in p.read_text().split("\n")[4])


@pytest.mark.parametrize("report", PROBE_REPORTS, ids=[f"{p.parent.name}/{p.name}" for p in PROBE_REPORTS])
def test_every_probe_report_opens_with_the_command_that_wrote_it(report):
    lines = report.read_text().split("\n")
    python, script, *argv = lines[4].split(" ")
    assert lines[3] == "```bash" and python == "python"
    head = probes.report_head(lines[0][2:], script.removeprefix("experiments/zoo40/"), SimpleNamespace(argv=argv))
    assert "\n".join(head).split("\n") == lines[:7]
    assert (paths.REPO_ROOT / script).is_file()
