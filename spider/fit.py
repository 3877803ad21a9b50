"""Train a PTM ranker: ``spider fit [group=name ...] [key=value ...]`` (or ``python -m spider.fit``).

Examples::

    spider fit                                   # the real mini zoo (built first if missing)
    spider fit data=synthetic                    # no-data demo on a generated zoo
    spider fit --print-config model.lr=3e-4      # show the resolved config and exit
    spider fit data=tiny logger=csv trainer.max_epochs=2
    spider fit trainer.devices=2 trainer.strategy=ddp trainer.accelerator=cpu
    spider fit run_dir=runs/a resume=true trainer.max_epochs=20   # continue runs/a
    spider fit run_dir=runs/a validate_checkpoint=runs/a/checkpoints/last.ckpt

A run directory holds ``config.yaml`` (resolved config, written by rank 0), ``checkpoints/``
(``last.ckpt`` plus the per-epoch checkpoint), ``metrics.json`` (val metrics, test metrics
computed once at the end, and both results tables) and the logger's files.

:func:`fit` builds the inputs (zoo, synthetic zoo) where missing, then calls
:func:`spider.train.train`, which only reads them. Reproducibility: :class:`spider.callbacks.BatchSeed`
re-seeds every RNG per training batch, so a resumed run reaches the weights of an uninterrupted one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from spider.config import FitConfig, as_config, compose, to_yaml
from spider.errors import SpiderError, cli_main

__all__ = ["fit", "main"]


def fit(cfg: DictConfig | FitConfig | dict | None = None) -> dict[str, Any]:
    """Build what ``cfg.data`` needs, then train (or, with ``validate_checkpoint``, evaluate).

    Args:
        cfg: a composed config (:func:`spider.config.compose`), or overrides of the default
            composition as a nested dict or :class:`FitConfig` (``fit({})`` = ``spider fit``).

    Returns:
        The metrics of :func:`spider.train.train`.
    """
    from spider.modules.scorer_registry import import_plugins
    from spider.run_inputs import build_inputs
    from spider.run_lock import run_dir_lock
    from spider.train import train, validate_checkpoint

    cfg = as_config(cfg)
    import_plugins(cfg.imports)
    # Before anything is written (the synthetic zoo's default cache is inside run_dir).
    with run_dir_lock(cfg.run_dir):
        build_inputs(cfg)
        if cfg.validate_checkpoint:
            return validate_checkpoint(cfg, cfg.validate_checkpoint)
        metrics, _ = train(cfg)
        return metrics


USAGE = """usage: spider fit [--print-config] [group=name ...] [key=value ...]

Train a PTM ranker. Groups (files in configs/<group>/): data, model, trainer, logger.
Keys: any field of the config (see --print-config), e.g. model.lr=3e-4 trainer.devices=2
run_dir=runs/x resume=true validate_checkpoint=PATH logger=csv.
"""


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    print_config = "--print-config" in argv
    overrides = [a for a in argv if a != "--print-config"]
    unknown = [a for a in overrides if a.startswith("-")]
    if unknown:
        raise SpiderError(f"unknown option {unknown[0]!r}; options are --print-config and key=value overrides")
    cfg = compose(overrides)
    if print_config or cfg.print_config:
        print(to_yaml(cfg), end="")
        return 0
    fit(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
