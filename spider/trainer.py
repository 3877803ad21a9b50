"""The Lightning Trainer and experiment loggers of ``spider fit`` from the ``trainer`` and ``logger`` groups."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

__all__ = ["build_loggers", "build_trainer"]


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    name = cfg.logger.name
    if name == "none":
        return []
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="csv")]
    from lightning.pytorch.loggers import WandbLogger

    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    # An explicit WANDB_MODE (e.g. "disabled" in tests, "online" for agents) decides; otherwise
    # logger.offline does.
    offline = bool(cfg.logger.offline) and "WANDB_MODE" not in os.environ
    return [WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, name=cfg.logger.run_name,
                        tags=list(cfg.logger.tags), save_dir=str(run_dir), offline=offline,
                        config=OmegaConf.to_container(cfg, resolve=True))]


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: Sequence[Any] = (), *, for_fit: bool = True) -> L.Trainer:
    """A Lightning Trainer for ``cfg.trainer`` writing into ``run_dir``."""
    t = cfg.trainer
    all_callbacks = list(callbacks)
    if for_fit:
        # One checkpoint per epoch (overwritten) plus last.ckpt, in a fixed folder for resume.
        all_callbacks.append(ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="epoch{epoch:03d}",
                                             auto_insert_metric_name=False, save_last=True, save_top_k=1))
    progress = bool(t.enable_progress_bar) and sys.stderr.isatty()
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        all_callbacks.append(RichProgressBar(leave=True))
    strategy: Any = t.strategy
    if strategy in ("ddp", "ddp_spawn") and str(t.accelerator) == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo",
                               start_method="spawn" if strategy == "ddp_spawn" else "popen")
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=strategy,
        num_nodes=t.num_nodes, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, gradient_clip_val=t.gradient_clip_val,
        check_val_every_n_epoch=t.check_val_every_n_epoch, num_sanity_val_steps=t.num_sanity_val_steps,
        enable_progress_bar=progress, enable_model_summary=False, callbacks=all_callbacks,
        logger=build_loggers(cfg, run_dir) if for_fit else False, default_root_dir=str(run_dir),
    )
