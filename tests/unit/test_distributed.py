"""spider.pipeline.distributed: the work split of a distributed zoo build and launcher detection."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from helpers.distributed_support import SLURM, TORCHRUN, launcher_env  # noqa: F401 - a fixture

from spider.errors import SpiderError
from spider.pipeline.distributed import DistContext, detect, distributed, shard

# ----------------------------------------------------------------------------------- shard


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_shards_partition_the_items_in_order_the_same_every_time(world, weighted):
    items = [f"item{i}" for i in range(23)]
    cost = (lambda item: 1 + int(item[4:]) % 4) if weighted else None
    shares = [shard(items, rank, world, cost) for rank in range(world)]
    assert Counter(x for share in shares for x in share) == Counter(items)  # each item exactly once
    assert all(share == sorted(share, key=items.index) for share in shares)  # original order kept
    assert shares == [shard(list(items), rank, world, cost) for rank in reversed(range(world))][::-1]


def test_round_robin_without_costs():
    assert shard(list("abcde"), 0, 2) == ["a", "c", "e"]
    assert shard(list("abcde"), 1, 2) == ["b", "d"]
    assert shard([], 1, 3) == []


def test_costs_balance_clustered_heavy_items():
    # 4 heavy items first, then 8 light ones: round-robin over 3 ranks loads them 10/7/7.
    costs = [4.0] * 4 + [1.0] * 8
    items = list(range(len(costs)))
    assert [sum(costs[i] for i in shard(items, r, 3)) for r in range(3)] == [10.0, 7.0, 7.0]
    assert [sum(costs[i] for i in shard(items, r, 3, costs.__getitem__)) for r in range(3)] == [8.0, 8.0, 8.0]


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0)])
def test_a_rank_outside_the_world_is_refused(rank, world):
    with pytest.raises(SpiderError, match="expected 0 <= rank < world size"):
        shard([1, 2, 3], rank, world)


# ---------------------------------------------------------------------------------- detect


def test_no_launcher_is_the_plain_one_process_build(launcher_env):
    dist = detect()
    assert dist == DistContext() and not dist.active and dist.is_main
    assert dist.device is None  # each stage keeps its own default device
    assert dist.shard([3, 1, 2]) == [3, 1, 2]
    assert dist.sum([2, 0.5]) == [2.0, 0.5]
    dist.barrier()  # no group: nothing to wait for
    with distributed() as same:
        assert same == DistContext()
    import torch.distributed as td

    assert not td.is_initialized()


def test_torchrun_variables(launcher_env):
    launcher_env(TORCHRUN)
    dist = detect()
    assert dist == DistContext(rank=1, world=2, local_rank=1, launcher="torchrun", main_address="10.0.0.5",
                               main_port=29511)
    assert dist.active and not dist.is_main


def test_slurm_variables_through_lightning(launcher_env):
    launcher_env(SLURM)
    dist = detect()
    # Lightning's SLURMEnvironment: rank SLURM_PROCID, first node of the list, port from the job id
    assert dist == DistContext(rank=3, world=4, local_rank=1, launcher="slurm", main_address="gpu07",
                               main_port=15000 + 4321)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu07", "19321")  # for env://


def test_torchrun_inside_a_slurm_job_wins(launcher_env):
    launcher_env({**SLURM, **TORCHRUN})
    assert detect().launcher == "torchrun" and detect().rank == 1


def test_one_slurm_task_or_an_interactive_job_is_one_process(launcher_env):
    launcher_env({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"})
    assert not detect().active and detect().launcher == "slurm"
    launcher_env({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "interactive"})  # Lightning: not a srun launch
    assert detect() == DistContext()

