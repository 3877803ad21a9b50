"""The metric classes give the same mean over all tasks when the tasks are split across 2 processes.

Runs a real 2-process gloo group (torch.multiprocessing spawn, as torchmetrics' own DDP tests do).
The parent enforces a deadline and kills the workers it spawned if they hang.
"""

import math
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spider.metrics import PearsonPerTask, SpearmanPerTask, Top1Regret, TopKHit, WeightedTau

WORLD_SIZE = 2
DEADLINE_S = 120.0


def make_metrics():
    return {
        "wtau_paper": WeightedTau(),
        "wtau_symmetric": WeightedTau(rank=True),
        "pearson": PearsonPerTask(),
        "spearman": SpearmanPerTask(),
        "regret": Top1Regret(),
        "top2": TopKHit(2),
    }


def make_data():
    """20 tasks x 7 models with ties, a partial mask and one undefined (empty) task."""
    rng = np.random.default_rng(11)
    truth = torch.tensor(rng.integers(60, 70, (20, 7)), dtype=torch.float64)
    preds = torch.tensor(rng.integers(0, 4, (20, 7)), dtype=torch.float32)
    mask = torch.tensor(rng.random((20, 7)) < 0.8)
    mask[:, :2] = True
    mask[5] = False
    return preds, truth, mask


def single_process_values():
    preds, truth, mask = make_data()
    metrics = make_metrics()
    for metric in metrics.values():
        metric.update(preds, truth, mask)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def _worker(rank, port, queue):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        preds, truth, mask = make_data()
        metrics = make_metrics()
        # Uneven shards, several updates per process: rank 0 gets 3 batches, rank 1 one.
        mine = range(0, 13) if rank == 0 else range(13, 20)
        rows = list(mine)
        chunks = [rows[:4], rows[4:9], rows[9:]] if rank == 0 else [rows]
        for chunk in chunks:
            for metric in metrics.values():
                metric.update(preds[chunk], truth[chunk], mask[chunk])
        values = {name: float(metric.compute()) for name, metric in metrics.items()}
        counts = {name: int(metric.num_tasks) for name, metric in metrics.items()}
        queue.put((rank, values, counts))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_compute_equals_single_process_mean():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    expected = single_process_values()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    spawned = mp.start_processes(
        _worker, args=(_free_port(), queue), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not spawned.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {DEADLINE_S:.0f} s")
    finally:
        for process in spawned.processes:
            if process.is_alive():
                process.kill()
    results = sorted(queue.get() for _ in range(WORLD_SIZE))
    assert [rank for rank, _, _ in results] == [0, 1]
    # compute() syncs for the call only; afterwards each process holds its own counts again.
    assert [counts["wtau_paper"] for _, _, counts in results] == [12, 7]
    for _, values, _ in results:
        for name, value in values.items():
            assert not math.isnan(value)
            assert value == pytest.approx(expected[name], abs=1e-12), name
