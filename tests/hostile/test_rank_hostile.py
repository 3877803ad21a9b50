"""Hostile inputs to ``spider rank``: doctored checkpoints (bad hyperparameters, wrong weight
shapes, module names to import), bad options, an output path that is a folder (issue 7, items 2, 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spider.config import compose
from spider.fit import fit
from spider.modules.scorer_registry import CHECKPOINT_KEY
from spider.rank import main
from spider.run_inputs import prepare_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, store root) of a token scorer trained one epoch on the tiny zoo."""
    tmp = tmp_path_factory.mktemp("rank-hostile")
    cfg = compose(["data=tiny", "logger=none", f"data.cache_dir={tmp / 'cache'}", f"run_dir={tmp / 'run'}",
                   "data.baselines=[leep,nce]", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
                   "trainer.max_epochs=1", "results_table=false"])
    fit(cfg)
    return tmp / "run" / "checkpoints" / "last.ckpt", prepare_store(cfg)["store"]


def _rank(capsys, checkpoint, store, *extra) -> tuple[int, str, str]:
    code = main(["--checkpoint", str(checkpoint), "--store", str(store), "--dataset", "target0", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _doctored(checkpoint: Path, out: Path, change) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    torch.save(state, out)
    return out


@pytest.mark.parametrize("name, change, fragment", [
    ("unknown-hparam", lambda s: s[CHECKPOINT_KEY]["hparams"].update(no_such_argument=3), "invalid hyperparameters"),
    ("negative-dim", lambda s: s[CHECKPOINT_KEY]["hparams"].update(dim=-8), "invalid hyperparameters"),
    ("hparams-not-a-dict", lambda s: s[CHECKPOINT_KEY].update(hparams=[1, 2]), "no valid 'spider' entry"),
    ("no-state-dict", lambda s: s.pop("state_dict"), "no 'state_dict'"),
    ("wrong-shapes", lambda s: s["state_dict"].update(
        {k: torch.zeros(3, 3) for k in list(s["state_dict"])[:2]}), "weights do not fit"),
    ("missing-weight", lambda s: s["state_dict"].pop(next(iter(s["state_dict"]))), "weights do not fit"),
])
def test_doctored_checkpoint_is_one_line(trained, tmp_path, capsys, name, change, fragment):
    checkpoint, store = trained
    bad = _doctored(checkpoint, tmp_path / f"{name}.ckpt", change)
    code, out, err = _rank(capsys, bad, store)
    line = _one_error_line(err)
    assert code == 2 and out == "" and str(bad) in line and fragment in line


def test_json_into_an_existing_folder_is_one_line_and_leaves_no_temp_file(trained, tmp_path, capsys):
    checkpoint, store = trained
    folder = tmp_path / "out"
    folder.mkdir()
    code, out, err = _rank(capsys, checkpoint, store, "--json", str(folder))
    assert code == 2 and "--json" in _one_error_line(err) and "folder" in err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_json_file_is_written_atomically(trained, tmp_path, capsys):
    checkpoint, store = trained
    code, _, _ = _rank(capsys, checkpoint, store, "--json", str(tmp_path / "sub" / "r.json"))
    assert code == 0 and [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "gpu"])
def test_bad_device_names_the_option_not_the_checkpoint(trained, capsys, device):
    checkpoint, store = trained
    if device == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    code, _, err = _rank(capsys, checkpoint, store, "--device", device)
    line = _one_error_line(err)
    assert code == 2 and line.startswith("error: --device") and "checkpoint" not in line


@pytest.mark.parametrize("option, value", [("--top", "-2"), ("--top", "0"), ("--batch-size", "0")])
def test_non_positive_counts_are_one_line(trained, capsys, option, value):
    checkpoint, store = trained
    code, out, err = _rank(capsys, checkpoint, store, option, value)
    assert code == 2 and out == "" and "expected a positive integer" in _one_error_line(err) and option in err


@pytest.mark.parametrize("extra, fragment", [
    (["--reranker", "{ckpt}"], "--reranker: re-scores the top k of the ranking; pass --rerank-topk"),
    (["--rerank-weight", "0.5"], "--rerank-weight: the fusion weight of --reranker"),
    (["--reranker", "{ckpt}", "--rerank-topk", "1", "--rerank-weight", "1.5"], "--rerank-weight: expected a number in"),
    (["--reranker", "{ckpt}", "--rerank-topk", "1", "--rerank-weight", "nan"], "--rerank-weight: expected a number in"),
    (["--reranker", "{missing}", "--rerank-topk", "1"], "--reranker: no file"),
    (["--reranker", "{ckpt}", "--rerank-topk", "1"], "expected a ReRanker"),  # a token scorer re-ranks nothing
    (["--rank-prior-weight", "1"], "--rank-prior-weight: expected a number in [0, 1)"),
    (["--rank-prior-weight", "nan"], "--rank-prior-weight: expected a number in [0, 1)"),
    (["--rank-prior-weight", "0.5"], "this scorer has no rank prior"),  # trained with data.rank_prior=null
])
def test_bad_reranker_combinations_are_one_line(trained, tmp_path, capsys, extra, fragment):
    checkpoint, store = trained
    extra = [a.format(ckpt=checkpoint, missing=tmp_path / "none.ckpt") for a in extra]
    code, out, err = _rank(capsys, checkpoint, store, *extra)
    assert code == 2 and out == "" and fragment in _one_error_line(err)


def test_top_limits_the_rows(trained, capsys):
    checkpoint, store = trained
    code, out, _ = _rank(capsys, checkpoint, store, "--top", "2")
    rows = [line for line in out.splitlines() if "ptm" in line]
    assert code == 0 and len(rows) == 2


@pytest.mark.parametrize("module", ["evilmod_rank_test", "antigravity"])
def test_a_checkpoint_never_makes_rank_import_a_module(trained, tmp_path, module):
    """A checkpoint naming a module to import (here one in the working directory, and a stdlib
    one that opens a browser) is refused with one line; nothing is imported."""
    checkpoint, store = trained
    marker = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")

    def name_module(state):
        state[CHECKPOINT_KEY].update(scorer="not_registered_here", module=module, imports=[module])

    bad = _doctored(checkpoint, tmp_path / "evil.ckpt", name_module)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "BROWSER": "true"}
    result = subprocess.run([sys.executable, "-m", "spider.rank", "--checkpoint", str(bad), "--store", str(store),
                             "--dataset", "target0"], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert "'not_registered_here' is not registered" in line and module in line
    assert not marker.exists()
