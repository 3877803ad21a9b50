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

from spider.callbacks import (BatchSeed, CheckInputs, FiniteLoss, QuietLightning, SaveConfig, SpiderCheckpointInfo,
                              Throughput, quiet_lightning, seed_all)
from spider.config import RESUMABLE_KEYS, FitConfig, as_config, load_saved, resume_differences
from spider.errors import ConfigError
from spider.evaluate import format_results, results_table
from spider.io import write_json_atomic
from spider.modules.scorer_registry import create_scorer, import_plugins, load_scorer, scorer_arguments
from spider.run_inputs import build_datamodule, env_rank, resolve_inputs
from spider.run_lock import run_dir_lock
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
    with run_dir_lock(cfg.run_dir):
        return _train(cfg)


def _train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    inputs = resolve_inputs(cfg)
    datamodule = build_datamodule(cfg, inputs, progress=env_rank() == 0)
    _warn_without_val(datamodule)
    if (cfg.model.prior is not None or cfg.data.rank_prior is not None) and env_rank() == 0:
        # The prior reads the label cache, which trainer.fit would build only after the scorer
        # exists; build it here (DDP children start inside trainer.fit and find it complete).
        datamodule.prepare_data()
    seed_all(cfg.seed)  # identical initial weights whatever the datamodule consumed
    model = build_scorer(cfg, datamodule, inputs.get("params"))
    throughput = Throughput()
    info = _checkpoint_info(cfg, model, datamodule, inputs.get("zoo"))
    # CheckInputs first: it refuses bad inputs before SaveConfig writes anything.
    trainer = build_trainer(cfg, run_dir, [CheckInputs(), BatchSeed(cfg.seed), FiniteLoss(), SpiderCheckpointInfo(info),
                                           SaveConfig(cfg, run_dir), throughput, QuietLightning()])
    trainer.fit(model, datamodule=datamodule, ckpt_path=_resume_from(cfg, run_dir, model), weights_only=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    metrics = {"episodes_per_second": throughput.value(trainer), "epochs": int(trainer.current_epoch),
               "checkpoint": str(last), **_evaluate(cfg, trainer, model, datamodule, inputs.get("params"))}
    _mark_non_finite(metrics)
    if trainer.is_global_zero:
        print(f"training throughput: {metrics['episodes_per_second']:.1f} episodes/s "
              f"({trainer.world_size} process(es)); checkpoint: {last}")
        write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def validate_checkpoint(cfg: DictConfig | FitConfig | dict, checkpoint: str | Path) -> dict[str, Any]:
    """Evaluate a saved checkpoint (val and test) with the configured data and trainer; rank 0
    writes ``<run_dir>/metrics-validate.json``."""
    cfg = _setup(cfg)
    with run_dir_lock(cfg.run_dir):
        return _validate_checkpoint(cfg, Path(checkpoint))


def _validate_checkpoint(cfg: DictConfig, checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.is_file():
        raise ConfigError(f"config key 'validate_checkpoint': no file {checkpoint}")
    inputs = resolve_inputs(cfg)
    datamodule = build_datamodule(cfg, inputs, progress=env_rank() == 0)
    _warn_without_val(datamodule)
    model = load_scorer(checkpoint)
    trainer = build_trainer(cfg, Path(cfg.run_dir), [QuietLightning()], for_fit=False)
    metrics = {"checkpoint": str(checkpoint), **_evaluate(cfg, trainer, model, datamodule, inputs.get("params"))}
    _mark_non_finite(metrics)
    if trainer.is_global_zero:
        write_json_atomic(Path(cfg.run_dir) / "metrics-validate.json", metrics)
    return metrics


def _prior_values(key: str, name: str, datamodule: Any, params: Optional[dict]) -> list[float]:
    """Static prior ``name`` over the datamodule's PTMs; a bad one is a one-line error on ``key``."""
    from spider.errors import RegistryError
    from spider.priors import prior_scores

    try:
        return [float(v) for v in prior_scores(name, datamodule.prior_inputs(params))]
    except (RegistryError, ConfigError) as err:
        raise ConfigError(f"config key {key!r}: {err}") from None


def build_scorer(cfg: DictConfig, datamodule: Any, params: Optional[dict] = None) -> Any:
    """The registered scorer ``cfg.model.scorer`` sized for the datamodule's zoo; with
    ``cfg.model.prior`` its static prior (``spider.priors``) over the datamodule's PTMs, trained
    with, or ``cfg.data.rank_prior``, the one its rankings are shrunk towards (``params``: PTM id
    -> parameter count, for ``param_count``)."""
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    prior, prior_scale = kwargs.pop("prior"), kwargs.pop("prior_scale")
    for key in ("name", "scorer", "rerank_topk"):
        kwargs.pop(key)
    rank_prior = cfg.data.rank_prior  # never both: spider.config.check
    if prior is not None:
        kwargs.update(model_prior=_prior_values("model.prior", prior, datamodule, params), prior_scale=prior_scale)
    elif rank_prior is not None:
        ensemble = cfg.data.get("ensemble_rank_prior_weight")
        kwargs.update(rank_prior=_prior_values("data.rank_prior", rank_prior, datamodule, params),
                      rank_prior_weight=float(cfg.data.rank_prior_weight),
                      ensemble_rank_prior_weight=None if ensemble is None else float(ensemble))
    from spider.modules.scorer_registry import _scorer_class

    accepted = scorer_arguments(_scorer_class(cfg.model.scorer))
    extras = {"model_names": datamodule.model_names, "target_names": datamodule.target_names,
              "model_dims": datamodule.model_dims}
    kwargs.update({k: v for k, v in extras.items() if accepted is None or k in accepted})
    if cfg.model.scorer == "reranker" and cfg.data.specific_models == 0:
        print("warning: model.scorer=reranker with data.specific_models=0 trains no specific "
              "projections; set data.specific_models (e.g. 2)", file=sys.stderr)
    scorer = create_scorer(cfg.model.scorer, num_models=datamodule.num_models, task_dim=datamodule.general_dim,
                           **kwargs)
    if cfg.data.get("history_tokens") is not None:
        _start_from_history(scorer, datamodule, float(cfg.data.history_tokens), params)
    return scorer


def _start_from_history(scorer: Any, datamodule: Any, std: float, params: Optional[dict]) -> None:
    """Model tokens start from the fine-tuning bank (``data.history_tokens``): PTMs that fine-tune
    alike start close, so the tokens need not learn from scratch what the bank already says.
    After the random start, so the training's random stream is the same either way."""
    from spider.priors import history_embedding

    bank = datamodule.prior_inputs(params).bank_accuracy
    if bank is None:
        raise ConfigError("config key 'data.history_tokens': needs a fine-tuning bank (data.finetune_bank, or a "
                          "zoo built with one); set it to null for a random start")
    scorer.start_model_tokens(history_embedding(bank, int(scorer.model_tokens.shape[1]), std))


def _setup(cfg: Any) -> DictConfig:
    cfg = as_config(cfg)
    import_plugins(cfg.imports)
    quiet_lightning()
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    return cfg


def _warn_without_val(datamodule: Any) -> None:
    # Documented choice: no validation targets -> no val/* metrics (never test targets instead).
    if env_rank() != 0 or not datamodule.test_names:
        return
    if not datamodule.val_names:
        print("warning: no validation targets (data.val_datasets is empty): val/* metrics are skipped; "
              "test targets are never used in their place", file=sys.stderr)
    elif datamodule.val_targets_as_tasks:
        print(f"note: the validation targets are training tasks here (data.val_targets_as_tasks="
              f"{datamodule.val_targets_as_tasks}): val/* metrics are skipped, and this fit decides nothing; "
              "test targets are never used in their place", file=sys.stderr)


def _resume_from(cfg: DictConfig, run_dir: Path, model: Any) -> Optional[str]:
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.resume:
        if last.is_file():
            _check_resume(cfg, run_dir, last, model)
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


def _check_resume(cfg: DictConfig, run_dir: Path, last: Path, model: Any) -> None:
    """Refuse (one line) to resume from an unreadable ``last.ckpt``, with a config that differs
    from the run's ``config.yaml`` outside :data:`spider.config.RESUMABLE_KEYS`, with a model
    whose weights do not fit the checkpoint's, or with fewer epochs than already trained."""
    hint = "pass overwrite=true to start again (its checkpoints are deleted) or use another run_dir"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, empty, text, pickles with code: many exception types
        text = str(err).strip().splitlines()
        raise ConfigError(f"resume=true: cannot read the checkpoint {last} ({type(err).__name__}"
                          f"{': ' + text[0][:160] if text else ''}); {hint}") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict) or "epoch" not in state:
        raise ConfigError(f"resume=true: {last} is not a checkpoint written by spider fit; {hint}")
    saved = run_dir / "config.yaml"
    if saved.is_file():
        differing = resume_differences(load_saved(saved), cfg)
        if differing:
            shown = ", ".join(f"{k} ({old!r} -> {new!r})" for k, old, new in differing[:5])
            more = f" and {len(differing) - 5} more" if len(differing) > 5 else ""
            raise ConfigError(f"resume=true: the config differs from the run's {saved} in {shown}{more}; only "
                              f"{', '.join(RESUMABLE_KEYS)} may change on resume; {hint}")
    elif env_rank() == 0:
        print(f"warning: resume=true: no {saved} to compare the config with", file=sys.stderr)
    own = model.state_dict()
    theirs = state["state_dict"]
    for key in sorted(own.keys() | theirs.keys()):
        mine = tuple(own[key].shape) if key in own else None
        saved_shape = tuple(getattr(theirs.get(key), "shape", ())) if key in theirs else None
        if mine != saved_shape:
            raise ConfigError(f"resume=true: {last} holds {key} of shape {saved_shape}, the configured model "
                              f"{'has none' if mine is None else f'expects {mine}'}; {hint}")
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("total", {})
    done = int(progress.get("processed", int(state["epoch"]) + 1))
    if cfg.trainer.max_epochs < done:
        raise ConfigError(f"config key 'trainer.max_epochs': {last} has already trained {done} epochs, "
                          f"got trainer.max_epochs={cfg.trainer.max_epochs}; pass at least {done} to resume it")


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


def _mark_non_finite(metrics: dict[str, Any]) -> None:
    """metrics.json writes a non-finite number as null; list those under ``"non_finite"`` (and warn)
    so that a NaN never passes for a value (e.g. a baseline that failed on a target, or the
    throughput of a resumed run that had no epoch left to train)."""
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, float) and not np.isfinite(value):
            found.append(path)

    walk(metrics, "")
    if found:
        metrics["non_finite"] = found
        if env_rank() == 0:
            print(f"warning: {len(found)} metric(s) are not finite (null in metrics.json, listed under "
                  f"'non_finite'): {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}", file=sys.stderr)


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
