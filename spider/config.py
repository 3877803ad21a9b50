"""Structured configuration of ``python -m spider.fit``: schemas, composition and overrides.

The configuration is one :class:`FitConfig` tree with four groups (``data``, ``model``,
``trainer``, ``logger``). ``configs/fit.yaml`` names one YAML file per group in its ``defaults``
mapping (``data: synthetic`` reads ``configs/data/synthetic.yaml``) and may set top-level keys.
Command-line overrides are ``key=value`` items, applied in two passes:

1. ``group=name`` (a group key without a dot) picks another group file, by name or by path
   (``data=configs/data/mini.yaml``);
2. every other item (``model.lr=1e-3``, ``trainer.devices=2``, ``seed=3``) overrides one field.

Every value is checked against the dataclass schemas of :mod:`spider.config_schema` (through ``OmegaConf.structured``):
an unknown key or a value of the wrong type raises :class:`~spider.errors.ConfigError` with a
one-line message naming the key and the expected type. No Hydra dependency: the composition is
the small function :func:`compose`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from spider.config_schema import (
    GROUPS,
    LABEL_FIELDS,
    LOGGERS,
    PRECISIONS,
    DataConfig,
    FitConfig,
    LoggerConfig,
    ModelConfig,
    SyntheticConfig,
    TrainerConfig,
)
from spider.errors import ConfigError


def config_dir() -> Path:
    """The ``configs/`` folder shipped inside the package (``spider/configs``; in a source
    checkout a link to the repository's top-level ``configs/``)."""
    return Path(str(importlib.resources.files("spider") / "configs"))


def default_config() -> DictConfig:
    """The bare schema: types only, every value not given by a YAML file still MISSING."""
    cfg = OmegaConf.structured(FitConfig)
    OmegaConf.set_struct(cfg, True)
    return cfg


def compose(overrides: typing.Sequence[str] = (), root: Union[str, Path, None] = None) -> DictConfig:
    """Build the resolved configuration from ``<root>/fit.yaml``, group files and overrides.

    Args:
        overrides: ``key=value`` items (``data=synthetic``, ``model.lr=1e-3``).
        root: config folder holding ``fit.yaml`` and ``data/``, ``model/``, ... (default
            :func:`config_dir`).

    Raises:
        ConfigError: missing ``fit.yaml``, malformed override, unknown group file, unknown key,
            wrong type, or a field that no file or override sets.
    """
    root = Path(root) if root is not None else config_dir()
    group_choices, field_overrides = _split_overrides(overrides)
    if not (root / "fit.yaml").is_file():
        raise ConfigError(f"config folder {root}: no fit.yaml (the package's configs/ folder is missing; "
                          "reinstall spider)")
    primary = _read_yaml(root / "fit.yaml")
    defaults = primary.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{root / 'fit.yaml'}: 'defaults' must be a mapping group -> file name")
    for group in defaults:
        if group not in GROUPS:
            raise ConfigError(f"{root / 'fit.yaml'}: unknown group {group!r} in defaults; expected one of {', '.join(GROUPS)}")
    choices = {**defaults, **group_choices}

    cfg = default_config()
    for group, choice in choices.items():
        content = _read_group_file(root, group, str(choice))
        content.setdefault("name", Path(str(choice)).stem)
        cfg = _merge(cfg, {group: content})
    cfg = _merge(cfg, primary)
    cfg = _merge(cfg, _dotlist(field_overrides))
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"config: cannot resolve {_full_key(err) or 'interpolation'}: {_first_line(err)}") from None
    check(cfg)
    return cfg


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` whose value is still MISSING (``???``)."""
    out = []
    for key in cfg:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(full)
        elif isinstance(cfg[key], DictConfig):
            out += missing_keys(cfg[key], f"{full}.")
    return out


def check(cfg: DictConfig) -> None:
    """Every field set, and value checks that types alone cannot express (choices, ranges)."""
    unset = missing_keys(cfg)
    if unset:
        raise ConfigError(f"config key {unset[0]!r}: no value (set it in its configs/ YAML file or as "
                          f"{unset[0]}=...){f'; also unset: {len(unset) - 1} more' if len(unset) > 1 else ''}")
    if cfg.logger.name not in LOGGERS:
        raise ConfigError(f"config key 'logger.name': expected one of {', '.join(LOGGERS)}, got {cfg.logger.name!r}")
    positive = {
        "trainer.max_epochs": cfg.trainer.max_epochs,
        "trainer.num_nodes": cfg.trainer.num_nodes,
        "data.batch_size": cfg.data.batch_size,
        "data.num_label_tasks": cfg.data.num_label_tasks,
        "model.dim": cfg.model.dim,
        "model.depth": cfg.model.depth,
        "model.heads": cfg.model.heads,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key!r}: expected a positive int, got {value}")
    non_negative = {
        "data.num_workers": cfg.data.num_workers,
        "data.specific_models": cfg.data.specific_models,
        "data.val_tasks_per_target": cfg.data.val_tasks_per_target,
        "data.label_workers": cfg.data.label_workers,
        "model.rerank_topk": cfg.model.rerank_topk,
    }
    for key, value in non_negative.items():
        if value is not None and value < 0:
            raise ConfigError(f"config key {key!r}: expected an int >= 0, got {value}")
    if cfg.data.tasks_per_epoch is not None and cfg.data.tasks_per_epoch < 1:
        raise ConfigError(f"config key 'data.tasks_per_epoch': expected a positive int or null, got {cfg.data.tasks_per_epoch}")
    _check_numbers(cfg)
    if cfg.model.prior is not None and cfg.data.rank_prior is not None:
        raise ConfigError("config key 'data.rank_prior': expected null when model.prior is set (one static prior per scorer)")
    if cfg.logger.name == "wandb" and cfg.logger.offline is None:
        raise ConfigError("config key 'logger.offline': expected true or false for logger=wandb, got null")


def _check_numbers(cfg: DictConfig) -> None:
    """Ranges of the numeric fields: a NaN, an infinity or an out-of-range number is a one-line
    ConfigError here, never a traceback (or a silently NaN model) once training runs."""
    m, t, d = cfg.model, cfg.trainer, cfg.data
    # (key, value, test, what is expected); NaN fails every comparison, so every test rejects it.
    floats = [
        ("model.lr", m.lr, m.lr > 0 and math.isfinite(m.lr), "a finite float > 0"),
        ("model.weight_decay", m.weight_decay, 0 <= m.weight_decay < math.inf, "a finite float >= 0"),
        ("model.dropout", m.dropout, 0 <= m.dropout < 1, "a float in [0, 1)"),
        ("model.attn_dropout", m.attn_dropout, 0 <= m.attn_dropout < 1, "a float in [0, 1)"),
        ("model.mlp_ratio", m.mlp_ratio, 0 < m.mlp_ratio < math.inf, "a finite float > 0"),
        ("model.prior_scale", m.prior_scale, math.isfinite(m.prior_scale), "a finite float"),
        ("data.class_keep", d.class_keep, 0 < d.class_keep <= 1, "a float in (0, 1]"),
        ("data.rank_prior_weight", d.rank_prior_weight, 0 <= d.rank_prior_weight < 1, "a float in [0, 1)"),
        ("data.ensemble_rank_prior_weight", d.ensemble_rank_prior_weight,
         d.ensemble_rank_prior_weight is None or 0 <= d.ensemble_rank_prior_weight < 1, "a float in [0, 1) or null"),
        ("data.history_tokens", d.history_tokens,
         d.history_tokens is None or 0 < d.history_tokens < math.inf, "a finite float > 0 or null"),
        ("model.rerank_weight", m.rerank_weight, m.rerank_weight is None or 0 <= m.rerank_weight <= 1,
         "a float in [0, 1] or null"),
        ("trainer.gradient_clip_val", t.gradient_clip_val,
         t.gradient_clip_val is None or 0 <= t.gradient_clip_val < math.inf, "a finite float >= 0 or null"),
    ]
    if d.synthetic is not None:
        floats.append(("data.synthetic.gt_noise", d.synthetic.gt_noise, 0 <= d.synthetic.gt_noise < math.inf,
                       "a finite float >= 0"))
    for key, value, ok, expected in floats:
        if not ok:
            raise ConfigError(f"config key {key!r}: expected {expected}, got {value}")
    ints = [
        ("trainer.log_every_n_steps", t.log_every_n_steps, 1), ("trainer.check_val_every_n_epoch",
                                                                 t.check_val_every_n_epoch, 1),
        ("trainer.num_sanity_val_steps", t.num_sanity_val_steps, -1), ("model.warmup_steps", m.warmup_steps, 0),
        ("data.shard_size", d.shard_size, 1), ("data.mixed_weight", d.mixed_weight, 1),
        ("data.selected_members", d.selected_members, 1), ("data.val_targets_as_tasks", d.val_targets_as_tasks, 0),
    ]
    ints += [(k, v, 1) for k, v in (("trainer.threads", t.threads), ("model.head_hidden", m.head_hidden),
                                     ("data.val_batch_size", d.val_batch_size)) if v is not None]
    for key, value, low in ints:
        if value < low:
            raise ConfigError(f"config key {key!r}: expected an int >= {low}, got {value}")
    if m.dim % m.heads:
        raise ConfigError(f"config key 'model.dim': expected a multiple of model.heads={m.heads}, got {m.dim}")
    devices = t.devices
    number = int(devices) if isinstance(devices, int) or str(devices).lstrip("-").isdigit() else None
    if devices != "auto" and (number is None or (number < 1 and number != -1)):
        raise ConfigError(f"config key 'trainer.devices': expected an int >= 1, -1 (every device) or 'auto', "
                          f"got {devices!r}")
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"config key 'trainer.precision': expected one of {', '.join(PRECISIONS)}, "
                          f"got {t.precision!r}")


# Data keys that shape how a trained scorer ranks (its shrinkage towards the rank prior), never its
# weights: a resume or a cached benchmark fit may change them.
RANK_WEIGHT_KEYS = ("rank_prior_weight", "ensemble_rank_prior_weight")

# Keys that may differ between a run's saved config.yaml and the config that resumes it: how long
# to train, where logs and caches go, how many processes and threads build labels or load
# batches, what to print, how far rankings (of one scorer or an ensemble) are shrunk towards the
# rank prior. Every other key (data, model, optimiser, seed, devices, precision, ...) shapes the weights, so a resume with another value is refused (:func:`resume_differences`).
RESUMABLE_KEYS = ("trainer.max_epochs", "trainer.enable_progress_bar", "trainer.threads",
                  "trainer.log_every_n_steps", "trainer.num_sanity_val_steps", "logger", "data.label_workers",
                  "data.num_workers", "data.label_device", "data.cache_dir", "run_dir", "resume", "overwrite",
                  "print_config", "validate_checkpoint", "results_table", *(f"data.{k}" for k in RANK_WEIGHT_KEYS))


def resume_differences(saved: DictConfig, cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, new value)`` of every key outside :data:`RESUMABLE_KEYS` whose
    value differs between a run's saved config and ``cfg``."""
    old, new = _flatten(OmegaConf.to_container(saved, resolve=True)), _flatten(OmegaConf.to_container(cfg, resolve=True))
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not any(k == r or k.startswith(f"{r}.") for r in RESUMABLE_KEYS)]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def to_yaml(cfg: DictConfig) -> str:
    """The resolved configuration as YAML text (what ``--print-config`` prints)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def load_saved(path: Union[str, Path]) -> DictConfig:
    """Read a ``config.yaml`` saved by a run back into the checked schema."""
    return _merge(default_config(), _read_yaml(Path(path)))


def as_config(cfg: Union[DictConfig, FitConfig, dict, None]) -> DictConfig:
    """Accept a composed DictConfig, or overrides of the default composition (:func:`compose`
    with no arguments): a nested dict, or a :class:`FitConfig` whose unset fields stay MISSING.

    ``fit({})``, ``fit(compose([]))`` and ``spider fit`` therefore resolve the same config.
    """
    if cfg is None:
        return compose()
    if isinstance(cfg, FitConfig):  # fields left at the bare schema's value are "not set"
        given = OmegaConf.to_container(OmegaConf.structured(cfg))
        out = _merge(compose(), _changed(given, OmegaConf.to_container(default_config())))
    elif isinstance(cfg, DictConfig):
        out = _merge(default_config(), OmegaConf.to_container(cfg, resolve=True))
    elif isinstance(cfg, dict):
        out = _merge(compose(), cfg)
    else:
        raise ConfigError(f"config: expected a DictConfig, FitConfig or dict, got {type(cfg).__name__}")
    check(out)
    return out


# --------------------------------------------------------------------------------------------
# helpers


def _changed(given: dict, base: dict) -> dict:
    """The entries of ``given`` that differ from ``base`` (recursively)."""
    out = {}
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            value = _changed(value, base[key])
            if value:
                out[key] = value
        elif value != base.get(key):
            out[key] = value
    return out


def _split_overrides(overrides: typing.Sequence[str]) -> tuple[dict[str, str], list[str]]:
    groups: dict[str, str] = {}
    fields: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. model.lr=1e-3)")
        if key in GROUPS:
            if not value:
                raise ConfigError(f"override {item!r}: expected {key}=<file name in configs/{key}/>")
            groups[key] = value
        else:
            # W&B sweep agents format Python's None as "None"; the schema's null is meant.
            fields.append(f"{key}={'null' if value == 'None' else value}")
    return groups, fields


def _group_file(root: Path, group: str, choice: str) -> Path:
    as_path = Path(choice)
    if choice.endswith((".yaml", ".yml")) and as_path.is_file():
        return as_path
    path = root / group / f"{choice}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (root / group).glob("*.yaml"))
        raise ConfigError(
            f"config group {group}={choice!r}: no file {path}; available: {', '.join(available) or 'none'}"
        )
    return path


def _read_group_file(root: Path, group: str, choice: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A group file's mapping; ``extends: <file of the same group>`` starts from that file's mapping
    (recursively), so a variant states only what differs and every other value has one source."""
    path = _group_file(root, group, choice)
    content = _read_yaml(path)
    base = content.pop("extends", None)
    if base is None:
        return content
    if not isinstance(base, str) or base in (*seen, choice):
        raise ConfigError(f"config file {path}: 'extends' must name another {group} file without a cycle, "
                          f"got {base!r}")
    return OmegaConf.to_container(_merge(OmegaConf.create(_read_group_file(root, group, base, (*seen, choice))),
                                         content))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: invalid YAML ({_first_line(err)})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(content).__name__}")
    return content


def _dotlist(items: list[str]) -> DictConfig:
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {_first_line(err)}") from None


def _merge(cfg: DictConfig, other: Any) -> DictConfig:
    """Merge ``other`` into the schema-typed ``cfg``, turning OmegaConf errors into one line."""
    try:
        return typing.cast(DictConfig, OmegaConf.merge(cfg, other))
    except ConfigKeyError as err:
        key = _full_key(err)
        hint = _did_you_mean(err)
        parent, _, _ = key.rpartition(".")
        known = _known_keys(parent)
        suffix = f" (did you mean {hint!r}?)" if hint else (f"; known keys: {', '.join(known)}" if known else "")
        raise ConfigError(f"unknown config key {key!r}{suffix}") from None
    except ValidationError as err:
        key = _full_key(err)
        expected = _expected_type(key)
        raise ConfigError(f"config key {key!r}: expected {expected}, got {_bad_value(err)}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"config key {_full_key(err) or '?'}: {_first_line(err)}") from None
    except (TypeError, ValueError) as err:  # e.g. a mapping given where the schema has a list
        raise ConfigError(f"config: cannot merge {sorted(other) if isinstance(other, dict) else 'overrides'} "
                          f"into the schema ({_first_line(err)})") from None


def _full_key(err: Exception) -> str:
    return str(getattr(err, "full_key", "") or getattr(err, "key", "") or "")


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "msg", None) or err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _did_you_mean(err: Exception) -> str:
    text = _first_line(err)
    marker = "Did you mean: '"
    if marker not in text:
        return ""
    name = text.split(marker, 1)[1].split("'", 1)[0]
    parent = _full_key(err).rpartition(".")[0]
    return f"{parent}.{name}" if parent else name


def _bad_value(err: Exception) -> str:
    text = _first_line(err)
    if text.startswith("Value '"):
        return repr(text[len("Value '"):].split("'", 1)[0])
    if "is not a ListConfig" in text:
        return "a single value (write [a,b])"
    if "is not a DictConfig" in text or "is not a subclass" in text:
        return "a single value instead of a mapping"
    return text


def _schema_type(key: str) -> Any:
    """The annotated type at dotted ``key`` of :class:`FitConfig` (list items: the item type);
    None where the path leaves the schema."""
    tp: Any = FitConfig
    for part in key.replace("[", ".").replace("]", "").split(".") if key else []:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is Union and len(args) == 1:
            tp = args[0]  # Optional[X] -> X
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        elif typing.get_origin(tp) in (list, typing.List) and part.isdigit():
            tp = typing.get_args(tp)[0]
        else:
            return None
    return tp


def _known_keys(parent: str) -> list[str]:
    tp = _schema_type(parent)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _expected_type(key: str) -> str:
    tp = _schema_type(key)
    return "a value of the schema's type" if tp is None else _type_name(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return f"{text} or null" if type(None) in args else text
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


__all__ = [
    "GROUPS",
    "LABEL_FIELDS",
    "RANK_WEIGHT_KEYS",
    "RESUMABLE_KEYS",
    "DataConfig",
    "FitConfig",
    "LoggerConfig",
    "ModelConfig",
    "SyntheticConfig",
    "TrainerConfig",
    "as_config",
    "check",
    "compose",
    "config_dir",
    "default_config",
    "load_saved",
    "missing_keys",
    "resume_differences",
    "to_yaml",
]
