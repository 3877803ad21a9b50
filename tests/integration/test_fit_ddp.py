"""Two-process DDP training on CPU (gloo) through the real CLI, in a subprocess.

Lightning's ``strategy=ddp`` re-launches ``python -m spider.fit <argv>`` for rank 1, so the test
runs the CLI in a subprocess with a timeout (never inside pytest's own process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TIMEOUT_S = 480


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-m", "spider.fit", *args], cwd=cwd, env=env, text=True,
                              capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:  # a hung rank must fail the test, not the CI job
        pytest.fail(f"spider.fit did not finish within {TIMEOUT_S}s:\n{(err.stdout or '')[-3000:]}\n{(err.stderr or '')[-3000:]}")


def test_two_process_ddp_fit_matches_single_process_validation(tmp_path):
    run_dir = tmp_path / "run"
    common = ["data=tiny", "logger=none", f"data.cache_dir={tmp_path / 'cache'}", f"run_dir={run_dir}",
              "data.baselines=[leep,nce]", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
              "trainer.log_every_n_steps=1",
              # A rank prior: its scale is reduced over both ranks' tasks, so they validate alike.
              "data.rank_prior=label_mean", "data.rank_prior_weight=0.5"]
    ddp = _run([*common, "trainer.max_epochs=2", "trainer.devices=2", "trainer.strategy=ddp"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "wtau_paper" in ddp.stdout  # the results table, printed once by rank 0
    assert ddp.stdout.count("training throughput") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "config.yaml").is_file()
    assert metrics["epochs"] == 2

    # The same checkpoint validated by one process gives the same metrics.
    single = _run([*common, f"validate_checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-4000:]
    validated = json.loads((run_dir / "metrics-validate.json").read_text())
    assert set(validated["val"]) == set(metrics["val"])
    for key, value in metrics["val"].items():
        assert validated["val"][key] == pytest.approx(value, abs=1e-6), key
    assert validated["tables"]["test"]["wtau_paper"]["scorer"] == pytest.approx(metrics["tables"]["test"]["wtau_paper"]["scorer"])
