"""``python -m spider.baselines``: scoring a tiny feature store, JSON output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from spider.baselines.__main__ import main
from spider.store import FeatureStore

BASELINES = "leep,nce,gbc,lfc"


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """Three models of the same 120 samples, of decreasing quality, plus one without logits."""
    root = tmp_path_factory.mktemp("store")
    store = FeatureStore(root)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    for model, sep in (("strong", 3.0), ("medium", 1.0), ("weak", 0.0)):
        x = rng.normal(size=(120, 8))
        x[:, :4] += sep * np.eye(4)[y]
        logits = rng.normal(size=(120, 12))
        logits[np.arange(120), y * 3] += 2 * sep
        store.write(model, "toy", "train", features=x.astype(np.float32), labels=y, logits=logits.astype(np.float32))
    store.write("headless", "toy", "train", features=rng.normal(size=(120, 5)).astype(np.float32), labels=y)
    store.write("strong", "other", "train", features=rng.normal(size=(50, 8)).astype(np.float32),
                labels=rng.permutation(np.arange(50) % 2))
    return root


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_to_stdout_ranks_the_strong_model_first(store_root, capsys):
    code, out, err = run(["--store", store_root, "--dataset", "toy", "--baselines", BASELINES, "--json", "-"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["models"] == ["headless", "medium", "strong", "weak"]
    assert result["baselines"] == BASELINES.split(",")
    assert result["num_samples"] == 120 and result["num_classes"] == 4
    assert result["aggregate"]["name"] == "copeland"
    assert result["aggregate"]["ranking"][0] == "strong"
    assert result["aggregate"]["scores"]["strong"] == 3.0  # beats all three others
    # The model without a source head has no LEEP/NCE (null) and a warning line per baseline.
    assert result["scores"]["leep"]["headless"] is None and result["scores"]["gbc"]["headless"] is not None
    assert err.count("warning:") == 2 and "headless" in err


def test_selected_models_and_json_file_with_table(store_root, tmp_path, capsys):
    out_file = tmp_path / "scores.json"
    argv = ["--store", store_root, "--dataset", "toy", "--model", "weak", "--model", "strong",
            "--baselines", "gbc,lfc", "--json", out_file]
    code, out, _ = run(argv, capsys)
    assert code == 0
    result = json.loads(out_file.read_text())
    assert result["models"] == ["weak", "strong"]
    assert result["aggregate"]["ranking"] == ["strong", "weak"]
    assert "copeland" in out and "strong" in out and "gbc" in out  # the table went to stdout
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]  # no temp files left


def test_list_needs_no_store(capsys):
    code, out, _ = run(["--list"], capsys)
    assert code == 0
    for name in ("leep", "nce", "gbc", "sfda", "lfc", "pactran_dir", "nleep"):
        assert name in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--store", "{root}/missing", "--dataset", "toy"], "no such directory"),
        (["--store", "{root}", "--dataset", "nope", "--baselines", "gbc"], "nope"),
        (["--store", "{root}", "--dataset", "toy", "--model", "ghost", "--baselines", "gbc"], "ghost"),
        (["--store", "{root}", "--dataset", "toy", "--baselines", "gbc,bogus"], "bogus"),
        (["--store", "{root}", "--dataset", "toy", "--baselines", "gbc", "--aggregate", "vote"], "vote"),
        (["--store", "{root}", "--dataset", "toy", "--baselines", "gbc", "--json", "{root}/no/dir/x.json"], "--json"),
        (["--store", "{root}", "--dataset", "toy", "--model", "strong", "--model", "strong", "--baselines", "gbc"], "twice"),
        (["--store", "{root}", "--dataset", "toy", "--baselines", ","], "--baselines"),
        (["--dataset", "toy"], "--store"),
        (["--frobnicate"], "unrecognized"),
        (["--store", "{root}", "--dataset", "../toy", "--model", "strong", "--baselines", "gbc"], "dataset"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(store_root, capsys, argv, needle):
    code, out, err = run([a.format(root=store_root) for a in argv], capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_models_with_different_labels_are_rejected(store_root, tmp_path, capsys):
    store = FeatureStore(tmp_path)
    y = np.repeat(np.arange(2), 10)
    store.write("a", "d", "train", features=np.ones((20, 3), np.float32) + y[:, None], labels=y)
    store.write("b", "d", "train", features=np.ones((20, 3), np.float32), labels=y[::-1].copy())
    code, _, err = run(["--store", tmp_path, "--dataset", "d", "--baselines", "lfc"], capsys)
    assert code == 2 and "labels differ" in err


def test_module_entry_point_exit_codes(store_root):
    ok = subprocess.run([sys.executable, "-m", "spider.baselines", "--store", str(store_root), "--dataset", "other",
                         "--baselines", "gbc", "--json", "-"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["models"] == ["strong"]
    bad = subprocess.run([sys.executable, "-m", "spider.baselines", "--store", str(store_root / "nowhere"),
                          "--dataset", "toy"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
