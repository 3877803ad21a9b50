"""Launcher environments for tests of :mod:`spider.pipeline.distributed` (monkeypatched, no group)."""

from __future__ import annotations

import os

import pytest

TORCHRUN = {"TORCHELASTIC_RUN_ID": "abc", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29511"}
# srun --nodes 2 --ntasks-per-node 2: the fourth task, second on node gpu08
SLURM = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
         "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "804321", "SLURM_JOB_NAME": "zoo"}


@pytest.fixture
def launcher_env(monkeypatch):
    """``set(variables)``: no launcher variables but these; every change (also what Lightning
    exports, MASTER_ADDR/MASTER_PORT) is undone after the test."""
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    for key in TORCHRUN:
        monkeypatch.delenv(key, raising=False)  # registered, so a value Lightning exports is removed

    def set_env(variables: dict[str, str]) -> None:
        for key, value in variables.items():
            monkeypatch.setenv(key, value)

    return set_env
