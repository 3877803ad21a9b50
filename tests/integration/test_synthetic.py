"""Synthetic demo zoo: layout, determinism, clean store, disjoint classes, learnable ranking."""

import csv
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from spider.errors import SpiderError
from spider.store import FeatureStore, validate
from spider.synthetic import main, make_synthetic_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_synthetic_zoo(tmp_path_factory.mktemp("zoo"), seed=0)


def _read_gt(path):
    with open(path, newline="") as f:
        return {(r["dataset"], r["model"]): float(r["accuracy"]) for r in csv.DictReader(f)}


def test_layout_and_shapes(zoo):
    store = FeatureStore(zoo.store_root)
    assert zoo.models == [f"ptm{i:02d}" for i in range(8)] and zoo.general_model == "general"
    assert zoo.pool_datasets == ["pool0", "pool1", "pool2"] and zoo.target_datasets == ["target0", "target1", "target2"]
    assert store.models() == sorted(zoo.models + ["general"])
    for dataset, classes in [("pool1", 20), ("target2", 10)]:
        assert store.splits("general", dataset) == ["train"]
        general = store.entry("general", dataset)
        assert (general.num_samples, general.dim, general.num_classes) == (classes * 30, 32, classes)
        assert np.bincount(general.labels()).tolist() == [30] * classes
        for i, model in enumerate(zoo.models):
            e = store.entry(model, dataset)
            assert e.dim == (16, 24, 32)[i % 3] and e.has_logits and e.logits().shape == (classes * 30, 50)
            # Shared sample order: row i is the same sample for every model.
            np.testing.assert_array_equal(e.sample_ids(), general.sample_ids())
            np.testing.assert_array_equal(e.labels(), general.labels())
            assert e.features().dtype == np.float32


def test_store_validates_clean(zoo):
    assert validate(zoo.store_root) == []


def test_pool_and_target_classes_disjoint(zoo):
    store = FeatureStore(zoo.store_root)
    pool = {c for d in zoo.pool_datasets for c in store.entry("general", d).class_names}
    target = {c for d in zoo.target_datasets for c in store.entry("general", d).class_names}
    assert len(pool) == 60 and len(target) == 30 and not pool & target


def test_ground_truth_csv(zoo):
    with open(zoo.ground_truth_csv, newline="") as f:
        assert f.readline().strip().startswith("dataset,model,accuracy")
    gt = _read_gt(zoo.ground_truth_csv)
    assert set(gt) == {(d, m) for d in zoo.target_datasets for m in zoo.models}
    assert all(0 <= a <= 100 for a in gt.values())
    for d in zoo.target_datasets:  # accuracy is a monotone function of affinity plus ~1 point of noise
        acc = [gt[d, m] for m in zoo.models]
        assert spearmanr(acc, [zoo.affinity[d][m] for m in zoo.models])[0] > 0.8
        assert np.ptp(acc) > 10  # enough spread to rank


def test_deterministic_by_seed(tmp_path):
    small = dict(num_models=3, pool_datasets=1, targets=1, samples_per_class=5)
    a, b, c = (make_synthetic_zoo(tmp_path / n, seed=s, **small) for n, s in [("a", 7), ("b", 7), ("c", 8)])

    def digest(zoo):
        store = FeatureStore(zoo.store_root)
        return {e: {k: v["sha256"] for k, v in store.entry(*e).manifest["arrays"].items()} for e in store.entries()}

    assert digest(a) == digest(b) and a.ground_truth_csv.read_text() == b.ground_truth_csv.read_text()
    assert digest(a) != digest(c) and a.ground_truth_csv.read_text() != c.ground_truth_csv.read_text()


def _nearest_centroid_accuracy(features, labels):
    """Two-fold nearest-centroid accuracy: a cheap stand-in for a transferability score."""
    train = np.arange(len(labels)) % 2 == 0
    centres = np.stack([features[train & (labels == c)].mean(0) for c in np.unique(labels)])
    dist = ((features[~train, None, :] - centres[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == labels[~train]).mean())


def test_ranking_is_learnable_baseline_tracks_ground_truth(zoo):
    from spider.baselines import get_baseline, list_baselines

    if "logme" in list_baselines():
        logme = get_baseline("logme")

        def score(e):
            return logme(features=e.features().astype(np.float64), labels=e.labels())
    else:

        def score(e):
            return _nearest_centroid_accuracy(e.features(), e.labels())

    store, gt = FeatureStore(zoo.store_root), _read_gt(zoo.ground_truth_csv)
    correlations = []
    for d in zoo.target_datasets:
        scores = [score(store.entry(m, d)) for m in zoo.models]
        correlations.append(spearmanr(scores, [gt[d, m] for m in zoo.models])[0])
    assert np.mean(correlations) > 0.5 and min(correlations) > 0


def test_bad_arguments_rejected(tmp_path):
    with pytest.raises(SpiderError, match="num_models"):
        make_synthetic_zoo(tmp_path, num_models=0)
    with pytest.raises(SpiderError, match="model_dims"):
        make_synthetic_zoo(tmp_path, model_dims=(16, 0))
    assert not (tmp_path / "store").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main([str(out), "--seed", "3", "--num-models", "4", "--targets", "2", "--model-dims", "8,12"]) == 0
    printed = capsys.readouterr().out
    assert "not a benchmark" in printed and "ptm00 .. ptm03" in printed and "target0, target1" in printed
    assert FeatureStore(out / "store").entry("ptm01", "target1").dim == 12
    # Writing over an existing zoo needs --overwrite; the error is one line and exit code 2.
    assert main([str(out), "--num-models", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a store" in err
    assert main([str(out), "--num-models", "0"]) == 2
    assert main([str(out), "--num-models", "4", "--overwrite"]) == 0


def test_module_entry_point(tmp_path):
    run = subprocess.run([sys.executable, "-m", "spider.synthetic", str(tmp_path), "--num-models", "2",
                          "--pool-datasets", "1", "--targets", "1", "--samples-per-class", "3"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert str(tmp_path / "ground_truth.csv") in run.stdout


def test_validation_targets_have_ground_truth_and_change_nothing_else(tmp_path):
    small = dict(num_models=2, pool_datasets=1, classes_per_pool=4, targets=1, classes_per_target=3,
                 samples_per_class=4, general_dim=4, model_dims=(4,), latent_dim=4, num_factors=2, source_classes=5)
    plain = make_synthetic_zoo(tmp_path / "plain", **small)
    with_val = make_synthetic_zoo(tmp_path / "val", val_targets=2, **small)
    assert plain.val_datasets == [] and with_val.val_datasets == ["val0", "val1"]
    rows = (tmp_path / "val" / "ground_truth.csv").read_text().splitlines()
    assert rows[: len(rows) - 4] == (tmp_path / "plain" / "ground_truth.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in rows[1:]} == {"target0", "val0", "val1"}
    a, b = FeatureStore(plain.store_root), FeatureStore(with_val.store_root)
    assert np.array_equal(a.entry(plain.models[0], "target0").features(), b.entry(plain.models[0], "target0").features())
    val_classes = set(b.entry("general", "val0").class_names)
    assert not val_classes & set(b.entry("general", "target0").class_names)
