"""Feature store: round trips, row reads, atomic writes, corruption handling and validate()."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from spider import store as store_mod
from spider.errors import StoreError
from spider.store import FeatureStore, StoreProblem, validate


def _data(n=40, d=6, c=4, cs=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        features=rng.normal(size=(n, d)).astype(np.float32),
        labels=np.arange(n) % c,
        logits=rng.normal(size=(n, cs)).astype(np.float32),
        sample_ids=np.array([f"img{i:03d}" for i in range(n)]),
        class_names=[f"class{k}" for k in range(c)],
    )


def _only_current_version(parent, split="train"):
    """The entry's directory holds its symlink, the version it points to and the writers' lock
    file: no temp dir, no older version."""
    return sorted(p.name for p in parent.iterdir()) == sorted([split, os.readlink(parent / split), f".lock-{split}"])


@pytest.fixture
def store(tmp_path):
    s = FeatureStore(tmp_path / "store")
    s.write("resnet", "cifar", "train", **_data(), info={"source": "test"})
    s.write("vit", "cifar", "train", **_data(seed=1))
    s.write("resnet", "dtd", "test", features=np.ones((5, 2), np.float32), labels=np.zeros(5, int))
    return s


def test_round_trip_and_listing(store):
    d = _data()
    e = store.entry("resnet", "cifar", "train")
    assert (e.num_samples, e.dim, e.num_classes, e.has_logits) == (40, 6, 4, True)
    np.testing.assert_array_equal(e.features(), d["features"])
    np.testing.assert_array_equal(e.labels(), d["labels"])
    assert e.labels().dtype == np.int64
    np.testing.assert_array_equal(e.logits(), d["logits"])
    np.testing.assert_array_equal(e.sample_ids(), d["sample_ids"])
    assert e.class_names == d["class_names"]
    m = e.manifest
    assert (m["schema_version"], m["model"], m["dataset"], m["split"]) == (1, "resnet", "cifar", "train")
    assert m["arrays"]["features"]["shape"] == [40, 6] and m["arrays"]["features"]["dtype"] == "float32"
    assert len(m["arrays"]["labels"]["sha256"]) == 64
    assert m["created"]["info"] == {"source": "test"} and m["created"]["spider_version"]
    assert store.models() == ["resnet", "vit"]
    assert store.datasets() == ["cifar", "dtd"] and store.datasets("vit") == ["cifar"]
    assert store.splits("resnet", "dtd") == ["test"]
    assert store.has("vit", "cifar") and not store.has("vit", "dtd")
    assert list(store.entries()) == [("resnet", "cifar", "train"), ("resnet", "dtd", "test"), ("vit", "cifar", "train")]
    nologits = store.entry("resnet", "dtd", "test")
    assert not nologits.has_logits and nologits.sample_ids() is None and nologits.class_names is None
    with pytest.raises(StoreError, match="logits"):
        nologits.logits()
    assert validate(store) == [] and validate(store.root) == []


def test_rows_any_int_index_array(store):
    d = _data()
    e = store.entry("resnet", "cifar")
    rows = np.array([7, 2, 7, 39, 0, 2])
    np.testing.assert_array_equal(e.features(rows), d["features"][rows])
    np.testing.assert_array_equal(e.labels(rows.tolist()), d["labels"][rows])
    np.testing.assert_array_equal(e.logits(rows.astype(np.uint16)), d["logits"][rows])
    np.testing.assert_array_equal(e.sample_ids(rows), d["sample_ids"][rows])
    assert e.features(np.array([], dtype=np.int64)).shape == (0, 6)
    for bad in ([0.5, 1.0], [[1, 2]], [40], [-1]):
        with pytest.raises(StoreError, match="rows"):
            e.features(bad)


def test_reads_are_memory_mapped_copies(store):
    e = store.entry("resnet", "cifar")
    # The entry holds memory maps, so a row read pages in only the selected rows ...
    assert all(isinstance(a, np.memmap) for a in e._arrays.values())
    out = e.features([1, 2])
    # ... and hands back an ordinary in-memory array the caller may modify.
    assert not isinstance(out, np.memmap) and out.flags.writeable
    out[:] = 0
    assert e.features([1]).any()


def test_entry_pickles_by_path_not_by_data(store):
    e = store.entry("resnet", "cifar")
    blob = pickle.dumps(e)
    assert len(blob) < 400  # the arrays alone would take ~1.8 KB
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.features([5, 1]), e.features([5, 1]))


def test_float16_and_float64_storage(tmp_path):
    s = FeatureStore(tmp_path)
    x16 = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float16)
    assert s.write("m", "d", "train", features=x16, labels=np.zeros(10, int)).features().dtype == np.float16
    np.testing.assert_array_equal(s.entry("m", "d").features(), x16)
    e = s.write("m", "d64", "train", features=x16.astype(np.float64), labels=np.zeros(10, int))
    assert e.features().dtype == np.float32
    with pytest.raises(StoreError, match="features.*NaN or Inf"):  # overflows float32
        s.write("m", "big", "train", features=np.full((2, 2), 1e300), labels=np.zeros(2, int))


def test_regression_labels(tmp_path):
    s = FeatureStore(tmp_path)
    y = np.random.default_rng(0).normal(size=(12, 2))
    e = s.write("m", "reg", "train", features=np.ones((12, 4), np.float32), labels=y, class_names=["age", "pose"])
    assert e.num_classes is None and e.is_regression and e.class_names == ["age", "pose"]
    np.testing.assert_array_equal(e.labels([3, 1]), y[[3, 1]])
    assert validate(s) == []


@pytest.mark.parametrize("field, change", [
    ("features", dict(features=np.ones((40,), np.float32))),
    ("features", dict(features=np.ones((40, 6), np.int64))),
    ("features", dict(features=np.full((40, 6), np.nan, np.float32))),
    ("labels", dict(labels=np.arange(39))),
    ("labels", dict(labels=np.arange(40) % 4 + 0.5)),
    ("labels", dict(labels=np.arange(40) % 5)),            # class 4 but only 4 class names
    ("labels", dict(labels=-(np.arange(40) % 4))),
    ("labels", dict(labels=np.full((40, 2), np.inf))),
    ("logits", dict(logits=np.ones((41, 3), np.float32))),
    ("logits", dict(logits=np.full((40, 3), np.nan))),
    ("sample_ids", dict(sample_ids=np.arange(39))),
    ("sample_ids", dict(sample_ids=[object()] * 40)),
    ("class_names", dict(class_names="abcd")),
    ("info", dict(info={"x": object()})),
])
def test_bad_inputs_rejected_naming_field(tmp_path, field, change):
    s = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match=f"^{field}") as err:
        s.write("m", "d", "train", **{**_data(), **change})
    assert "\n" not in str(err.value)
    assert not s.has("m", "d") and list(s.entries()) == []


@pytest.mark.parametrize("ids", [("", "d", "train"), ("m", "../x", "train"), ("m", "d", ".tmp"), ("m/x", "d", "t"),
                                 (3, "d", "train")])
def test_bad_ids_rejected(tmp_path, ids):
    s = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match="invalid id"):
        s.write(*ids, features=np.ones((2, 2), np.float32), labels=np.zeros(2, int))
    with pytest.raises(StoreError, match="invalid id"):
        s.entry(*ids)


def test_overwrite_rules_and_other_entries_untouched(store):
    other = store.path("vit", "cifar") / "features.npy"
    before = (other.stat().st_ino, other.stat().st_mtime_ns)
    with pytest.raises(StoreError, match="entry exists"):
        store.write("resnet", "cifar", "train", **_data(seed=5))
    store.write("resnet", "cifar", "train", **_data(seed=5), overwrite=True)
    np.testing.assert_array_equal(store.entry("resnet", "cifar").features(), _data(seed=5)["features"])
    assert (other.stat().st_ino, other.stat().st_mtime_ns) == before
    assert _only_current_version(store.path("resnet", "cifar").parent)


def test_failed_write_leaves_old_entry_and_no_temp(store, monkeypatch):
    def boom(path, manifest):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_mod, "_write_manifest", boom)
    with pytest.raises(RuntimeError):
        store.write("resnet", "cifar", "train", **_data(seed=9), overwrite=True)
    np.testing.assert_array_equal(store.entry("resnet", "cifar").features(), _data()["features"])
    assert _only_current_version(store.path("resnet", "cifar").parent)


def test_killed_writer_leaves_no_valid_entry(tmp_path):
    root = tmp_path / "store"
    # A writer killed just before its manifest lands: os._exit skips every cleanup handler.
    code = (
        "import os, numpy as np\n"
        "from spider import store as s\n"
        "s._write_manifest = lambda path, manifest: os._exit(9)\n"
        f"s.FeatureStore({str(root)!r}).write('m', 'd', 'train', features=np.ones((4, 2), np.float32),"
        " labels=np.zeros(4, int))\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    leftovers = [p.name for p in (root / "m" / "d").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-train-")
    s = FeatureStore(root)
    assert not s.has("m", "d") and s.models() == [] and s.datasets() == [] and list(s.entries()) == []
    with pytest.raises(StoreError, match="no such store entry"):
        s.entry("m", "d")
    assert validate(s) == []
    # The next write of that entry cleans the dead writer's temp dir.
    s.write("m", "d", "train", features=np.ones((4, 2), np.float32), labels=np.zeros(4, int))
    assert _only_current_version(root / "m" / "d")


def test_directory_without_manifest_is_not_an_entry(store):
    (store.path("vit", "dtd", "train")).mkdir(parents=True)
    np.save(store.path("vit", "dtd", "train") / "features.npy", np.ones((3, 3)))
    assert not store.has("vit", "dtd") and store.datasets("vit") == ["cifar"]
    with pytest.raises(StoreError, match="no such store entry"):
        store.entry("vit", "dtd")
    problems = validate(store)
    assert len(problems) == 1 and problems[0].field == "manifest.json"


def _corrupt_json(p):
    (p / "manifest.json").write_text("{not json")


def _drop_logits(p):
    (p / "logits.npy").unlink()


def _truncate_features(p):
    f = p / "features.npy"
    f.write_bytes(f.read_bytes()[:200])


def _reshape_features(p):
    np.save(p / "features.npy", np.ones((40, 5), np.float32))


def _retype_labels(p):
    np.save(p / "labels.npy", np.arange(40, dtype=np.int32))


def _garbage_npy(p):
    (p / "labels.npy").write_bytes(b"this is not an npy file at all")


def _pickled_ids(p):
    np.save(p / "sample_ids.npy", np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)


def _wrong_model_in_manifest(p):
    m = json.loads((p / "manifest.json").read_text())
    m["model"] = "vit"
    (p / "manifest.json").write_text(json.dumps(m))


def _future_schema(p):
    m = json.loads((p / "manifest.json").read_text())
    m["schema_version"] = 99
    (p / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("corrupt, file", [
    (_corrupt_json, "manifest.json"), (_drop_logits, "logits.npy"), (_truncate_features, "features.npy"),
    (_reshape_features, "features.npy"), (_retype_labels, "labels.npy"), (_garbage_npy, "labels.npy"),
    (_pickled_ids, "sample_ids.npy"), (_wrong_model_in_manifest, "manifest.json"),
    (_future_schema, "manifest.json"),
])
def test_corrupted_entry_raises_store_error_naming_file(store, corrupt, file):
    path = store.path("resnet", "cifar")
    corrupt(path)
    with pytest.raises(StoreError) as err:
        store.entry("resnet", "cifar")
    message = str(err.value)
    assert str(path / file) in message and "\n" not in message
    assert any(str(path / file) in str(p) for p in validate(store))


def test_validate_reports_every_problem(store):
    a = store.path("resnet", "cifar")
    feats = np.load(a / "features.npy", mmap_mode="r+")
    feats[3, 1] = np.nan
    feats.flush()
    del feats
    labels = np.load(a / "labels.npy", mmap_mode="r+")
    labels[0] = 17
    labels.flush()
    del labels
    _truncate_features(store.path("vit", "cifar"))
    problems = validate(store)
    assert all(isinstance(p, StoreProblem) and "\n" not in str(p) for p in problems)
    found = {(p.path.parent.parent.parent.name, p.field, p.message.split()[0]) for p in problems}
    assert found == {
        ("resnet", "features", "sha256"), ("resnet", "features", "non-finite"),
        ("resnet", "labels", "sha256"), ("resnet", "labels", "label"),
        ("vit", "features", "cannot"),
    }
    # Without checksums only the content problems remain.
    assert len(validate(store, checksums=False)) == 3
    assert validate(store.root / "missing")[0].field == "root"
