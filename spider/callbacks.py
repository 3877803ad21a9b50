"""Lightning callbacks of ``spider fit``: reproducible batches, checkpoint metadata, config, throughput."""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from spider.config import to_yaml
from spider.errors import SpiderError
from spider.io import write_text_atomic
from spider.modules.scorer_registry import CHECKPOINT_KEY

__all__ = ["BatchSeed", "CheckInputs", "FiniteLoss", "QuietLightning", "SaveConfig", "SpiderCheckpointInfo", "Throughput", "quiet_lightning",
           "seed_all"]


class _DropLightningTips(logging.Filter):
    """Lightning advertises add-on packages on every run; keep the output to what matters."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


def quiet_lightning() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
        logger.addFilter(_DropLightningTips())
    # The scorer's validation metrics are torchmetrics objects that sync across processes in
    # compute(); Lightning cannot know that and suggests sync_dist for each of them.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('(val|test)/")
    # Lightning's own use of a torch API that torch deprecated; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on all ``parts`` (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class BatchSeed(L.Callback):
    """Re-seed python/numpy/torch RNGs from ``(seed, epoch, batch, rank)`` before each training batch.

    Lightning does not checkpoint RNG states, and the DataLoader draws from the global RNG when
    its iterator is created, which a resumed run does at a different moment than an
    uninterrupted one. Seeding per batch makes dropout masks (and anything else random in a
    training step) depend only on the batch's position, so a resumed run repeats them exactly.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        seed_all(_derive_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


class QuietLightning(L.Callback):
    """Applies :func:`quiet_lightning` in every process (ddp_spawn children start fresh)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        quiet_lightning()


class CheckInputs(L.Callback):
    """Before the first training step (after the datamodule's setup, before anything later in the
    callback list): :func:`spider.run_inputs.check_inputs`, so non-finite data never trains."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            from spider.run_inputs import check_inputs

            check_inputs(trainer.datamodule)


class FiniteLoss(L.Callback):
    """Stops training at the first non-finite training loss, before its backward pass, so the
    weights (and the checkpoints, written at epoch ends) never hold what it would make of them."""

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank stops together: one raising alone would hang the others
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise SpiderError(f"training loss is {float(loss.detach().float().reshape(-1)[0])} at epoch "
                              f"{trainer.current_epoch}, step {trainer.global_step} (rank {trainer.global_rank}); "
                              "stopped before it reached the weights (check model.lr and the inputs)")


class SpiderCheckpointInfo(L.Callback):
    """Adds ``checkpoint["spider"]``: the scorer's registry name and module, its constructor
    arguments, the zoo's model ids and dims and the general encoder id, as plain values, and
    ``reference``: the training tasks' class centres (:class:`spider.familiarity.TaskReference`,
    plain tensors), by which ``spider rank`` tells a task unlike every training task
    (``weights_only`` safe)."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = dict(info)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        reference = getattr(trainer.datamodule, "training_reference", None)
        if stage == "fit" and reference is not None and "reference" not in self.info:
            self.info["reference"] = reference().to_dict()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.info


class SaveConfig(L.Callback):
    """Writes the resolved config to ``<run_dir>/config.yaml`` on global rank 0 only."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.text = to_yaml(cfg)
        self.path = Path(run_dir) / "config.yaml"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer.is_global_zero and stage == "fit":
            write_text_atomic(self.path, self.text)


class Throughput(L.Callback):
    """Training episodes per second (all ranks together), measured over each epoch's batches."""

    def __init__(self) -> None:
        self.episodes = 0
        self.seconds = 0.0
        self._start: Optional[float] = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()
        self._epoch_episodes = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._epoch_episodes += int(batch["task_tokens"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._start is not None:
            seconds = time.perf_counter() - self._start
            self.seconds += seconds
            self.episodes += self._epoch_episodes
            self._start = None
            if seconds > 0:  # logged, so that it also reaches loggers and ddp_spawn's parent
                pl_module.log("train/episodes_per_s", self._epoch_episodes / seconds)

    def value(self, trainer: Any) -> float:
        """Episodes per second of the run (ddp_spawn: the value the spawned processes logged)."""
        if self.seconds > 0:
            return self.episodes / self.seconds
        logged = trainer.callback_metrics.get("train/episodes_per_s")
        return float(logged) if logged is not None else float("nan")
