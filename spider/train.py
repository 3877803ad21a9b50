"""Training entry point: ``train(cfg) -> (metrics, objects)``, as in lightning-hydra-template.

``train`` never builds a zoo: the inputs of ``cfg.data`` must exist (``spider fit`` builds them
first, :func:`spider.run_inputs.build_inputs`). ``val/*`` metrics come from the validation targets
every epoch (what checkpoint choice and sweeps read); ``test/*`` metrics are computed once, at the
end, on the final model. Under ``strategy=ddp`` Lightning re-launches the CLI once per extra
device; rank 0 has built everything by then, so the other ranks only read.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from spider.callbacks import BatchSeed, QuietLightning, SaveConfig, SpiderCheckpointInfo, Throughput, quiet_lightning, seed_all
from spider.config import FitConfig, as_config
from spider.errors import ConfigError
from spider.evaluate import format_results, results_table
from spider.io import write_json_atomic
from spider.modules.registry import create_scorer, import_plugins, load_scorer, scorer_arguments
from spider.run_inputs import build_datamodule, env_rank, resolve_inputs
from spider.trainer import build_trainer

__all__ = ["build_scorer", "train", "validate_checkpoint"]


def train(cfg: DictConfig | FitConfig | dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (or resume) the configured scorer; validate it; test it once.

    Returns:
        ``(metrics, objects)``: metrics ``{"val": {...}, "test": {...}, "tables": {"val", "test"},
        "episodes_per_second", "epochs", "checkpoint"}`` (rank 0 also writes them to
        ``<run_dir>/metrics.json``); objects ``{"cfg", "datamodule", "model", "trainer"}``.
    """
    cfg = _setup(cfg)
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    inputs = resolve_inputs(cfg)
    datamodule = build_datamodule(cfg, inputs, progress=env_rank() == 0)
    _warn_without_val(datamodule)
    seed_all(cfg.seed)  # identical initial weights whatever the datamodule consumed
    model = build_scorer(cfg, datamodule, inputs.get("params"))
    throughput = Throughput()
    info = _checkpoint_info(cfg, model, datamodule, inputs.get("zoo"))
    trainer = build_trainer(cfg, run_dir, [BatchSeed(cfg.seed), SpiderCheckpointInfo(info),
                                           SaveConfig(cfg, run_dir), throughput, QuietLightning()])
    trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_from(cfg, run_dir), weights_only=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    metrics = {"episodes_per_second": throughput.value(trainer), "epochs": int(trainer.current_epoch),
               "checkpoint": str(last), **_evaluate(cfg, trainer, model, datamodule, inputs.get("params"))}
    if trainer.is_global_zero:
        print(f"training throughput: {metrics['episodes_per_second']:.1f} episodes/s "
              f"({trainer.world_size} process(es)); checkpoint: {last}")
        write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def validate_checkpoint(cfg: DictConfig | FitConfig | dict, checkpoint: str | Path) -> dict[str, Any]:
    """Evaluate a saved checkpoint (val and test) with the configured data and trainer; rank 0
    writes ``<run_dir>/metrics-validate.json``."""
    cfg = _setup(cfg)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"config key 'validate_checkpoint': no file {checkpoint}")
    inputs = resolve_inputs(cfg)
    datamodule = build_datamodule(cfg, inputs, progress=env_rank() == 0)
    _warn_without_val(datamodule)
    model = load_scorer(checkpoint)
    trainer = build_trainer(cfg, Path(cfg.run_dir), [QuietLightning()], for_fit=False)
    metrics = {"checkpoint": str(checkpoint), **_evaluate(cfg, trainer, model, datamodule, inputs.get("params"))}
    if trainer.is_global_zero:
        write_json_atomic(Path(cfg.run_dir) / "metrics-validate.json", metrics)
    return metrics


def build_scorer(cfg: DictConfig, datamodule: Any, params: Optional[dict] = None) -> Any:
    """The registered scorer ``cfg.model.scorer`` sized for the datamodule's zoo; with
    ``cfg.model.prior`` its static prior (``spider.priors``) over the datamodule's PTMs
    (``params``: PTM id -> parameter count, for ``param_count``)."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    prior, prior_scale = kwargs.pop("prior"), kwargs.pop("prior_scale")
    for key in ("name", "scorer", "rerank_topk"):
        kwargs.pop(key)
    if prior is not None:
        from spider.errors import RegistryError
        from spider.priors import prior_scores

        try:
            scores = prior_scores(prior, datamodule.prior_inputs(params))
        except (RegistryError, ConfigError) as err:
            raise ConfigError(f"config key 'model.prior': {err}") from None
        kwargs.update(model_prior=[float(s) for s in scores], prior_scale=prior_scale)
    from spider.modules.registry import _scorer_class

    accepted = scorer_arguments(_scorer_class(cfg.model.scorer))
    extras = {"model_names": datamodule.model_names, "target_names": datamodule.target_names,
              "model_dims": datamodule.model_dims}
    kwargs.update({k: v for k, v in extras.items() if accepted is None or k in accepted})
    if cfg.model.scorer == "reranker" and cfg.data.specific_models == 0:
        print("warning: model.scorer=reranker with data.specific_models=0 trains no specific "
              "projections; set data.specific_models (e.g. 2)", file=sys.stderr)
    return create_scorer(cfg.model.scorer, num_models=datamodule.num_models, task_dim=datamodule.general_dim,
                         **kwargs)


def _setup(cfg: Any) -> DictConfig:
    cfg = as_config(cfg)
    import_plugins(cfg.imports)
    quiet_lightning()
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    return cfg


def _warn_without_val(datamodule: Any) -> None:
    # Documented choice: no validation targets -> no val/* metrics (never test targets instead).
    if datamodule.test_names and not datamodule.val_names and env_rank() == 0:
        print("warning: no validation targets (data.val_datasets is empty): val/* metrics are skipped; "
              "test targets are never used in their place", file=sys.stderr)


def _resume_from(cfg: DictConfig, run_dir: Path) -> Optional[str]:
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.resume:
        if last.is_file():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            return str(last)
        if env_rank() == 0:
            print(f"resume: no {last} yet; starting from scratch", file=sys.stderr)
    elif last.is_file():
        if not cfg.overwrite:
            raise ConfigError(f"config key 'run_dir': {run_dir} already holds a run (checkpoints/last.ckpt); pass "
                              "resume=true to continue it, overwrite=true to start again, or another run_dir")
        if env_rank() == 0:  # before DDP children start: they must not see the old checkpoints
            shutil.rmtree(run_dir / "checkpoints")
    return None


def _evaluate(cfg: DictConfig, trainer: Any, model: Any, datamodule: Any,
              params: Optional[dict] = None) -> dict[str, Any]:
    """``val`` and ``test`` metrics (Lightning, every rank) and, on rank 0, their results tables
    (:func:`spider.evaluate.results_table`; ``params``: PTM parameter counts for the priors)."""
    out: dict[str, Any] = {"val": {}, "test": {}, "tables": {"val": {}, "test": {}}}
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        if datamodule.stage_names(stage):
            results = run(model, datamodule=datamodule, verbose=False)
            out[stage] = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero and cfg.results_table:
        from spider.modules import ReRanker

        topk = int(cfg.model.rerank_topk or 0) if isinstance(model, ReRanker) else 0
        for stage in ("val", "test"):
            if datamodule.stage_names(stage):
                out["tables"][stage] = results_table(model, datamodule, stage=stage, rerank_topk=topk,
                                                      params=params)
                print(format_results(out["tables"][stage], title=f"{stage}: "))
    return out


def _checkpoint_info(cfg: DictConfig, model: Any, datamodule: Any, zoo: Optional[dict] = None) -> dict[str, Any]:
    return {
        # {"recipe", "dir", "recipe_hash"} of the zoo trained on (None: a plain store), so that
        # spider rank --images can instantiate its general encoder and PTMs.
        "zoo": _plain(dict(zoo)) if zoo else None,
        "scorer": cfg.model.scorer,
        # Where the scorer class lives: named in the error when it is not registered at load time
        # (never imported from here).
        "module": type(model).__module__,
        "imports": list(cfg.imports),
        "hparams": {k: _plain(v) for k, v in dict(model.hparams).items()},
        "model_names": list(datamodule.model_names),
        "model_dims": [int(d) for d in datamodule.model_dims],
        "general": cfg.data.general,
        "general_dim": int(datamodule.general_dim),
        "target_names": list(datamodule.target_names),
        "seed": int(cfg.seed),
    }


def _plain(value: Any) -> Any:
    """Containers of plain Python values only (safe for ``torch.load(weights_only=True)``)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
