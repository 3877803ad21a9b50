"""A zoo build spread over processes and machines: which rank owns which work item.

``torchrun --nproc-per-node 4 -m spider.zoo build minizoo`` (or ``srun python -m spider.zoo
build ...`` under SLURM) starts one build per *rank*. Every rank lists the same work items of a
stage (pre-training jobs, store entries, fine-tuning runs, label shards, bank runs) in the same
order, from the recipe alone, and :func:`shard` gives each item to exactly one rank: ownership
depends on an item's place in that full list, never on what is already built, so ranks that look
at the cache at different moments still agree, and a re-run after a rank died gives every missing
item to the same owner. A rank then builds the missing items it owns with its own local worker
pool (``--workers`` per rank), writing each through the atomic per-item caches; a barrier ends
the stage, and rank 0 alone writes what is global (``ground_truth.csv``, the label-cache
manifest, ``zoo.json``) from the caches, which is exactly what a one-process build writes.

Launchers are recognised by Lightning's cluster environments (the ones its DDP strategy uses):
``TorchElasticEnvironment`` (torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``)
before ``SLURMEnvironment`` (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the first node
of ``SLURM_NODELIST``), like Lightning's own order (torchrun may run inside a SLURM job). Without
either, or with a world of one, the build is the plain single-process build and no process group
is started. The group is ``gloo``: only barriers and a few counters travel between ranks; a rank
computes on its GPU ``cuda:<LOCAL_RANK>`` when there is one (feature extraction).

Example:
    >>> shard(["a", "b", "c", "d", "e"], rank=1, world=2)
    ['b', 'd']
    >>> with distributed() as dist:       # detects torchrun / srun, else one process
    ...     mine = dist.shard(jobs)
    ...     dist.barrier()
"""

from __future__ import annotations

import contextlib
import datetime
import heapq
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from spider.errors import SpiderError

__all__ = ["STAGE_TIMEOUT", "DistContext", "detect", "distributed", "shard"]

T = TypeVar("T")

# A barrier waits for the slowest rank's whole stage (hours of fine-tuning on a big zoo), so the
# collective timeout is long; a rank that dies is noticed sooner, by its launcher (torchrun ends
# the other ranks; srun does with --kill-on-bad-exit=1) or by gloo when the peer's socket closes.
STAGE_TIMEOUT = datetime.timedelta(hours=24)


def shard(items: Sequence[T], rank: int, world: int, cost: Callable[[T], float] | None = None) -> list[T]:
    """The items of ``rank`` out of ``world``: a partition of ``items`` (each in exactly one
    rank's share), in their original order, the same on every rank.

    Without ``cost``: round-robin by position. With ``cost``: the heaviest items first, each to
    the rank with the least total cost so far (ties: the lower rank), which balances a list where
    expensive items cluster (the real PTMs' fine-tuning runs cost about 4 timm runs).
    """
    if world < 1 or not 0 <= rank < world:
        raise SpiderError(f"rank {rank} of world size {world}: expected 0 <= rank < world size")
    if cost is None:
        return list(items[rank::world])
    loads = [(0.0, r) for r in range(world)]  # a heap of (total cost, rank)
    mine = []
    for index in sorted(range(len(items)), key=lambda i: (-float(cost(items[i])), i)):
        load, owner = heapq.heappop(loads)
        heapq.heappush(loads, (load + float(cost(items[index])), owner))
        if owner == rank:
            mine.append(index)
    return [items[i] for i in sorted(mine)]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed build (the defaults: one process, no group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launcher: str = "none"  # "torchrun", "slurm" or "none"
    main_address: str | None = None
    main_port: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other ranks (and so a process group to talk to)."""
        return self.world > 1

    @property
    def device(self) -> str | None:
        """This rank's GPU when there is one, None (each stage's default) in a one-process build."""
        if not self.active:
            return None
        import torch

        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"

    def shard(self, items: Sequence[T], cost: Callable[[T], float] | None = None) -> list[T]:
        return shard(items, self.rank, self.world, cost)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over all ranks (report counters)."""
        if not self.active:
            return [float(v) for v in values]
        import torch
        import torch.distributed as td

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        td.all_reduce(tensor)
        return tensor.tolist()


def detect() -> DistContext:
    """This process's place from the launcher's environment (see the module docstring)."""
    import torch.distributed as td

    # Importing Lightning costs seconds: only when torchrun or SLURM left their variables.
    if not td.is_torchelastic_launched() and not any(k.startswith("SLURM_") for k in os.environ):
        return DistContext()
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        cluster, launcher = TorchElasticEnvironment(), "torchrun"
    elif SLURMEnvironment.detect():
        try:
            cluster, launcher = SLURMEnvironment(auto_requeue=False), "slurm"
        except RuntimeError as err:  # Lightning's check of the srun variables
            raise SpiderError(f"SLURM environment: {' '.join(str(err).split())}") from None
    else:
        return DistContext()
    try:
        rank, world, local = cluster.global_rank(), cluster.world_size(), cluster.local_rank()
    except (KeyError, ValueError) as err:
        raise SpiderError(f"{launcher} environment: missing or non-integer variable ({err})") from None
    if world <= 1:
        return DistContext(launcher=launcher)
    if not 0 <= rank < world:
        raise SpiderError(f"{launcher} environment: rank {rank} outside world size {world}")
    # Lightning's environments export MASTER_ADDR/MASTER_PORT when the launcher did not (SLURM),
    # which the env:// rendezvous below reads.
    return DistContext(rank, world, local, launcher, cluster.main_address, cluster.main_port)


@contextlib.contextmanager
def distributed(context: DistContext | None = None) -> Iterator[DistContext]:
    """:func:`detect` (or ``context``) with its gloo process group started, if it has other ranks,
    and ended afterwards. A group the caller started already is used as it is."""
    dist = detect() if context is None else context
    if not dist.active:
        yield dist
        return
    import torch
    import torch.distributed as td

    if td.is_initialized():
        if (td.get_rank(), td.get_world_size()) != (dist.rank, dist.world):
            raise SpiderError(f"a process group of rank {td.get_rank()}/{td.get_world_size()} is running, "
                              f"but the {dist.launcher} environment says {dist.rank}/{dist.world}")
        yield dist
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
    # env://: under torchrun MASTER_ADDR/PORT name the store torchrun's agent already serves.
    td.init_process_group("gloo", init_method="env://", rank=dist.rank, world_size=dist.world,
                          timeout=STAGE_TIMEOUT)
    try:
        yield dist
    finally:
        td.destroy_process_group()
