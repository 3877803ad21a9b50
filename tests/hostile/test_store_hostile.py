"""Feature store under hostile conditions: writers killed between any two steps of an overwrite,
concurrent writers and readers, corrupted files on disk, absurd ids (issue 7, items 4 and 6)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import spider
from spider import store_checks, store_versions
from spider.errors import StoreError
from spider.store import MAX_ID_LENGTH, FeatureStore, validate

REPO = Path(spider.__file__).resolve().parent.parent
N, D, C = 64, 8, 4
DEAD_PID = 999_999_999  # above any pid_max: never a running process


def _tagged(tag, n=N, d=D):
    """Arrays whose every value encodes ``tag``, so a mix of two writes is visible."""
    return dict(features=np.full((n, d), tag, np.float32), labels=np.full(n, int(tag) % C),
                logits=np.full((n, 3), tag, np.float32), class_names=[f"c{k}" for k in range(C)],
                info={"tag": tag})


def _check_tagged(entry, tag=None):
    """Assert ``entry`` is one complete write; return its tag."""
    found = entry.manifest["created"]["info"]["tag"]
    assert tag is None or found == tag
    assert (entry.features() == found).all() and (entry.logits() == found).all()
    assert (entry.labels() == int(found) % C).all()
    return found


def _only_current_version(parent, split="train"):
    return sorted(p.name for p in parent.iterdir()) == sorted([split, os.readlink(parent / split), f".lock-{split}"])


def _make_legacy(store, model="m", dataset="d", split="train"):
    """Turn a versioned entry into the plain-directory layout of stores written before versions."""
    path = store.path(model, dataset, split)
    version = path.parent / os.readlink(path)
    path.unlink()
    version.rename(path)
    assert path.is_dir() and not path.is_symlink()


def _run(code, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


# A writer that overwrites m/d/train with tag 2 and dies (os._exit skips every cleanup handler,
# like kill -9) before or after the n-th call of one store helper.
_DYING_WRITER = """
import os, sys
import numpy as np
from spider import store as s, store_versions as v
root, func, nth, when, no_exchange = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
if no_exchange:
    v._exchange = lambda a, b: False
# store.py's helpers and the publishing helpers it calls are patched where store.py looks them
# up; the publishing steps those call, in spider.store_versions.
target = s.os if func == "rename" else s if hasattr(s, func) else v
original = getattr(target, func)
calls = []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth and when == "before":
        os._exit(9)
    result = original(*args, **kwargs)
    if len(calls) == nth:
        os._exit(9)
    return result
setattr(target, func, dying)
C = 4
s.FeatureStore(root).write("m", "d", "train", features=np.full((64, 8), 2.0, np.float32),
                           labels=np.full(64, 2), logits=np.full((64, 3), 2.0, np.float32),
                           class_names=[f"c{k}" for k in range(C)], info={"tag": 2.0}, overwrite=True)
sys.exit(0)
"""


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "legacy-dir"])
@pytest.mark.parametrize("func, nth, when, survivor", [
    ("_save", 2, "before", 1.0),            # half the arrays of the new version written
    ("_write_manifest", 1, "after", 1.0),   # new version complete in its temp dir
    ("_publish", 1, "before", 1.0),         # waiting for / holding the lock, nothing published
    ("_swap", 1, "before", 1.0),            # version renamed into place, pending symlink made
    ("_swap", 1, "after", 2.0),             # pointer swapped, not yet fsynced or collected
    ("_collect", 1, "before", 2.0),         # old version not yet deleted
    ("_remove", 1, "after", 2.0),           # first leftover deleted, the rest not
])
def test_writer_killed_between_steps_leaves_old_or_new_entry(tmp_path, legacy, func, nth, when, survivor):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    if legacy:
        _make_legacy(store)
    result = _run(_DYING_WRITER, tmp_path, func, nth, when, 0)
    assert result.returncode == 9, result.stderr
    assert store.has("m", "d") and list(store.entries()) == [("m", "d", "train")]
    _check_tagged(store.entry("m", "d"), survivor)
    assert validate(store) == []
    # The next writer cleans whatever the dead one left and publishes normally.
    _check_tagged(store.write("m", "d", "train", **_tagged(3.0), overwrite=True), 3.0)
    _check_tagged(store.entry("m", "d"), 3.0)
    assert _only_current_version(tmp_path / "m" / "d") and validate(store) == []


def test_writer_killed_in_fallback_rename_window_is_repaired(tmp_path):
    """Without an atomic exchange (filesystem lacks renameat2), replacing a plain legacy dir
    takes two renames; a writer dying between them is reported and repaired by the next write."""
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    _make_legacy(store)
    # renames: version into place, legacy dir away, link into place -> die after the second
    result = _run(_DYING_WRITER, tmp_path, "rename", 2, "after", 1)
    assert result.returncode == 9, result.stderr
    assert not store.has("m", "d")
    problems = validate(store)
    assert len(problems) == 1 and "writer died" in str(problems[0]) and "\n" not in str(problems[0])
    with pytest.raises(StoreError, match="entry exists"):  # the old entry came back first
        store.write("m", "d", "train", **_tagged(3.0))
    _check_tagged(store.entry("m", "d"), 1.0)
    assert validate(store) == []


def test_legacy_fallback_without_exchange_completes(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    _make_legacy(store)
    monkeypatch.setattr(store_versions, "_exchange", lambda a, b: False)
    _check_tagged(store.write("m", "d", "train", **_tagged(2.0), overwrite=True), 2.0)
    assert _only_current_version(tmp_path / "m" / "d") and validate(store) == []


def test_legacy_plain_directory_store_stays_readable(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    store.write("m", "d", "test", **_tagged(5.0))
    _make_legacy(store)
    assert list(store.entries()) == [("m", "d", "test"), ("m", "d", "train")]
    entry = store.entry("m", "d")
    assert entry.version is None and _check_tagged(entry) == 1.0
    assert _check_tagged(pickle.loads(pickle.dumps(entry))) == 1.0
    assert validate(store) == []
    # Its first overwrite turns it into a symlinked version, atomically.
    store.write("m", "d", "train", **_tagged(2.0), overwrite=True)
    assert store.path("m", "d").is_symlink()
    _check_tagged(store.entry("m", "d"), 2.0)
    assert _check_tagged(entry) == 1.0  # what was already open keeps its memory maps
    assert validate(store) == []


@pytest.mark.slow
def test_sigkilled_writer_at_random_moments_leaves_a_valid_entry(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(0.0, n=4096, d=64))
    loop = ("import sys, numpy as np\n"
            "from spider.store import FeatureStore\n"
            "s = FeatureStore(sys.argv[1])\n"
            "for k in range(1, 10**6):\n"
            "    s.write('m', 'd', 'train', features=np.full((4096, 64), k, np.float32), labels=np.full(4096, k % 4),\n"
            "            logits=np.full((4096, 3), k, np.float32), class_names=['c0', 'c1', 'c2', 'c3'],\n"
            "            info={'tag': k}, overwrite=True)\n")
    rng = np.random.default_rng(0)
    tags = set()
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", loop, str(tmp_path)], cwd=REPO)
        time.sleep(1.0 + rng.uniform(0, 0.5))  # start-up, then a random moment of some write
        writer.send_signal(signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL
        tags.add(_check_tagged(store.entry("m", "d")))
        assert validate(store) == []
    assert len(tags) > 1  # the writer did publish, so the kills hit a busy writer


_CONCURRENT_WRITER = """
import os, sys, time
import numpy as np
from spider.store import FeatureStore
root, me, go, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
while not os.path.exists(go):
    time.sleep(0.001)
s = FeatureStore(root)
for k in range(rounds):
    tag = 1000 * me + k
    s.write("m", "d", "train", features=np.full((64, 8), tag, np.float32), labels=np.full(64, tag % 4),
            logits=np.full((64, 3), tag, np.float32), class_names=["c0", "c1", "c2", "c3"],
            info={"tag": tag}, overwrite=True)
"""


@pytest.mark.slow
def test_concurrent_overwriters_both_finish_last_one_wins(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(0.0))
    go, rounds = tmp_path / "go", 40
    writers = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, str(tmp_path), str(me), str(go),
                                 str(rounds)], cwd=REPO, stderr=subprocess.PIPE, text=True) for me in (1, 2)]
    time.sleep(1.5)  # both imported and waiting
    go.touch()
    for w in writers:
        assert w.wait(timeout=300) == 0, w.stderr.read()
    assert _check_tagged(store.entry("m", "d")) in (1000 + rounds - 1, 2000 + rounds - 1)
    assert _only_current_version(tmp_path / "m" / "d") and validate(store) == []


_CREATOR = """
import os, sys, time
import numpy as np
from spider.errors import StoreError
from spider.store import FeatureStore
root, me, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.001)
try:
    FeatureStore(root).write("m", "d", "train", features=np.full((64, 8), me, np.float32),
                             labels=np.zeros(64, int), info={"tag": me})
except StoreError as err:
    print(err)
    sys.exit(3)
"""


def test_concurrent_creators_without_overwrite_one_wins_other_gets_store_error(tmp_path):
    code = _CREATOR
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s"), str(me), str(go)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in (1, 2)]
    time.sleep(1.5)
    go.touch()
    results = [(w.wait(timeout=120), w.stdout.read(), w.stderr.read()) for w in writers]
    assert sorted(r[0] for r in results) == [0, 3], results
    loser = next(r for r in results if r[0] == 3)
    assert "entry exists" in loser[1] and loser[2] == ""
    winner = 1 + [r[0] for r in results].index(0)
    entry = FeatureStore(tmp_path / "s").entry("m", "d")
    assert entry.manifest["created"]["info"]["tag"] == winner and (entry.features() == winner).all()


def test_concurrent_overwriting_threads(tmp_path):
    store = FeatureStore(tmp_path)
    errors = []

    def overwrite(me):
        try:
            for k in range(8):
                _check_tagged(store.write("m", "d", "train", **_tagged(100.0 * me + k), overwrite=True),
                              100.0 * me + k)
        except Exception as err:  # reported below: any exception fails the test
            errors.append(err)

    threads = [threading.Thread(target=overwrite, args=(me,)) for me in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _check_tagged(store.entry("m", "d")) % 100 == 7
    assert _only_current_version(tmp_path / "m" / "d") and validate(store) == []


@pytest.mark.slow
def test_reader_never_sees_a_torn_entry_while_overwritten(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1000.0, n=2048, d=32))
    loop = ("import sys, numpy as np\n"
            "from spider.store import FeatureStore\n"
            "s = FeatureStore(sys.argv[1])\n"
            "for k in range(300):\n"
            "    s.write('m', 'd', 'train', features=np.full((2048, 32), k, np.float32), labels=np.full(2048, k % 4),\n"
            "            logits=np.full((2048, 3), k, np.float32), class_names=['c0', 'c1', 'c2', 'c3'],\n"
            "            info={'tag': k}, overwrite=True)\n")
    writer = subprocess.Popen([sys.executable, "-c", loop, str(tmp_path)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen, reads = set(), 0
    while writer.poll() is None:
        seen.add(_check_tagged(store.entry("m", "d")))  # a torn entry fails the check or raises
        assert store.has("m", "d") and list(store.entries()) == [("m", "d", "train")]
        reads += 1
    assert writer.returncode == 0, writer.stderr.read()
    assert _check_tagged(store.entry("m", "d")) == 299
    assert len(seen) > 2 and reads > 2  # the reader really ran during the overwrites
    assert _only_current_version(tmp_path / "m" / "d") and validate(store) == []


def test_pickled_entry_reopens_its_own_version_or_fails_clearly(tmp_path):
    store = FeatureStore(tmp_path)
    entry = store.write("m", "d", "train", **_tagged(1.0))
    blob = pickle.dumps(entry)
    assert _check_tagged(pickle.loads(blob)) == 1.0
    store.write("m", "d", "train", **_tagged(2.0), overwrite=True)
    # A worker must not mix the parent's data with a newer write's.
    with pytest.raises(StoreError, match="overwritten after it was opened") as err:
        pickle.loads(blob)
    assert "\n" not in str(err.value)


def _flip_byte(path, offset_from_end=5):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot does not touch the mtime


_OPEN = """
import sys
from spider.errors import StoreError
from spider.store import FeatureStore
try:
    e = FeatureStore(sys.argv[1]).entry("m", "d")
except StoreError as err:
    print(err)
    sys.exit(3)
print(float(e.features().sum()))
"""


@pytest.mark.parametrize("name", ["features", "labels", "logits"])
def test_bit_flip_is_caught_by_entry(tmp_path, name):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    _flip_byte(store.path("m", "d") / f"{name}.npy")
    result = _run(_OPEN, tmp_path)  # a fresh process has hashed nothing yet
    assert result.returncode == 3, result.stdout + result.stderr
    message = result.stdout.strip()
    assert "\n" not in message and message.startswith(str(store.path("m", "d") / f"{name}.npy"))
    assert "sha256" in message


def test_checksum_is_computed_once_per_file_and_again_when_the_file_changes(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    hashed = []
    real_sha = store_checks._sha256
    monkeypatch.setattr(store_checks, "_sha256", lambda p: hashed.append(Path(p).name) or real_sha(p))
    monkeypatch.setattr(store_checks, "_VERIFIED", {})  # as in a fresh process
    store.entry("m", "d")
    store.entry("m", "d")
    assert sorted(hashed) == ["features.npy", "labels.npy", "logits.npy"]
    # Rewriting a file in place (even with its old mtime) changes its key: hashed and caught.
    _flip_byte(store.path("m", "d") / "labels.npy")
    with pytest.raises(StoreError, match="labels.npy: labels: sha256"):
        store.entry("m", "d")
    assert hashed.count("labels.npy") == 2 and hashed.count("features.npy") == 1


@pytest.mark.parametrize("position", [0, 1, 2])
def test_300_character_id_is_one_line_store_error(tmp_path, position):
    ids = ["m", "d", "train"]
    ids[position] = "x" * 300
    store = FeatureStore(tmp_path / "s")
    for call in (lambda: store.write(*ids, features=np.ones((2, 2), np.float32), labels=np.zeros(2, int)),
                 lambda: store.entry(*ids), lambda: store.has(*ids), lambda: store.path(*ids)):
        with pytest.raises(StoreError, match=f"of 300 characters \\(expected at most {MAX_ID_LENGTH}\\)") as err:
            call()
        assert "\n" not in str(err.value) and len(str(err.value)) < 200
    assert not (tmp_path / "s").exists()


def test_ids_at_the_length_limit_work(tmp_path):
    ids = ("m" * MAX_ID_LENGTH, "d" * MAX_ID_LENGTH, "s" * MAX_ID_LENGTH)
    store = FeatureStore(tmp_path)
    store.write(*ids, **_tagged(1.0))
    _check_tagged(store.write(*ids, **_tagged(2.0), overwrite=True), 2.0)
    assert list(store.entries()) == [ids] and validate(store) == []


def test_unwritable_root_is_one_line_store_error(tmp_path):
    root = tmp_path / "file"
    root.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot write the entry") as err:
        FeatureStore(root).write("m", "d", "train", **_tagged(1.0))
    assert "\n" not in str(err.value) and str(root / "m" / "d" / "train") in str(err.value)


def test_truncated_npy_data_is_one_line_store_error(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    f = store.path("m", "d") / "features.npy"
    f.write_bytes(f.read_bytes()[:-100])  # header intact, rows missing
    with pytest.raises(StoreError) as err:
        store.entry("m", "d")
    assert str(err.value).startswith(str(f)) and "\n" not in str(err.value)
    assert [p.path for p in validate(store)] == [f]


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "legacy-dir"])
def test_manifest_listing_a_missing_array(tmp_path, legacy):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", features=np.ones((4, 2), np.float32), labels=np.zeros(4, int))
    if legacy:
        _make_legacy(store)
    mpath = store.path("m", "d") / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["arrays"]["logits"] = {"file": "logits.npy", "shape": [4, 3], "dtype": "float32", "sha256": "0" * 64}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="logits.npy: logits: cannot read .npy") as err:
        store.entry("m", "d")
    assert str(err.value).startswith(str(store.path("m", "d") / "logits.npy")) and "\n" not in str(err.value)
    assert [p.field for p in validate(store)] == ["logits"]


def test_nan_written_behind_the_store_s_back_is_found_by_validate(tmp_path):
    """Even with a manifest whose sha256 matches the NaN file, validate() scans the values."""
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    path = store.path("m", "d")
    features = np.load(path / "features.npy", mmap_mode="r+")
    features[17, 3] = np.nan
    features.flush()
    del features
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"]["features"]["sha256"] = store_checks._sha256(path / "features.npy")
    (path / "manifest.json").write_text(json.dumps(manifest))
    for checksums in (True, False):
        problems = validate(store, checksums=checksums)
        assert [(p.path.name, p.field, p.message) for p in problems] == [
            ("features.npy", "features", "non-finite values near row 0")]


def test_deleted_version_is_a_missing_entry_reported_by_validate(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    target = os.readlink(store.path("m", "d"))
    store_versions._remove(tmp_path / "m" / "d" / target)
    assert not store.has("m", "d") and list(store.entries()) == []
    with pytest.raises(StoreError, match=f"points to missing {target}"):
        store.entry("m", "d")
    problems = validate(store)
    assert len(problems) == 1 and f"points to missing {target}" in str(problems[0])
    store.write("m", "d", "train", **_tagged(2.0))  # a dangling pointer is no entry: no overwrite needed
    _check_tagged(store.entry("m", "d"), 2.0)


def test_dead_writers_leftovers_are_cleaned_live_ones_kept(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("m", "d", "train", **_tagged(1.0))
    base = tmp_path / "m" / "d"
    dead = [base / f".tmp-train-{DEAD_PID}-0123abcd", base / f".old-train-{DEAD_PID}-0123abcd",
            base / f".v-train-{'a' * 32}"]
    live = [base / f".tmp-train-{os.getppid()}-0123abcd", base / f".tmp-train-x-{DEAD_PID}-0123abcd"]
    for p in dead + live:
        p.mkdir()
    os.symlink(".v-train-nothing", base / f".tmp-train-{DEAD_PID}-feedbeef")
    dead.append(base / f".tmp-train-{DEAD_PID}-feedbeef")
    assert validate(store) == []  # hidden leftovers are no entries and no problems
    store.write("m", "d", "train", **_tagged(2.0), overwrite=True)
    assert not any(os.path.lexists(p) for p in dead)
    assert all(p.is_dir() for p in live)  # a running writer's temp dir, another split's temp dir
