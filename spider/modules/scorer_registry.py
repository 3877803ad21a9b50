"""Registry of scorer modules (``@register_scorer`` in the style of timm's ``register_model``).

A scorer is a ``lightning.LightningModule`` class whose ``forward(task_tokens [B, C, Dg],
task_mask [B, C]) -> scores [B, M]`` ranks the M models of a zoo; the config selects it by name
(``get_scorer(name)(**hyperparameters)``). See ``TokenScorer`` for a worked example.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from spider.errors import ConfigError, SpiderError
from spider.registry import Registry

ScorerT = TypeVar("ScorerT", bound=type)

SCORERS: Registry[type] = Registry("scorer")


def register_scorer(name: str, **meta: Any) -> Callable[[ScorerT], ScorerT]:
    """Class decorator registering a scorer under ``name``; also sets ``cls.scorer_name``."""

    def decorator(cls: ScorerT) -> ScorerT:
        SCORERS.add(name, cls, **meta)
        cls.scorer_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def get_scorer(name: str) -> type:
    return SCORERS.get(name)


def list_scorers(pattern: str = "*") -> list[str]:
    return SCORERS.list(pattern)


# ------------------------------------------------------------------ create and load (as timm's)

CHECKPOINT_KEY = "spider"  # extra entry of every checkpoint written by ``spider fit``
ENTRY_POINT_GROUP = "spider.scorers"  # installed packages register scorers through this group


def scorer_arguments(cls: type) -> set[str] | None:
    """Names ``cls.__init__`` accepts, following ``**kwargs`` up the MRO; None = anything."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if klass.__module__.startswith(("lightning", "torch")):
            return None
    return None


def create_scorer(name: str, **kwargs: Any) -> Any:
    """Instantiate the registered scorer ``name``; ``None`` kwargs are dropped (the class
    default applies), as timm's ``create_model`` does.

    Raises:
        ConfigError: unknown scorer, or an argument the scorer does not take.
    """
    cls = _scorer_class(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = scorer_arguments(cls)
    extra = sorted(set(kwargs) - accepted) if accepted is not None else []
    if extra:
        raise ConfigError(f"config key 'model.{extra[0]}': scorer {name!r} does not take it")
    return cls(**kwargs)


def load_scorer(checkpoint: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Rebuild a scorer from a checkpoint written by ``spider fit`` (``torch.load(weights_only=True)``).

    Nothing named in the checkpoint is imported: a scorer of a user module must be registered
    first (import the module, ``imports=[...]`` / ``--imports``, or an installed package's entry
    point in the ``spider.scorers`` group); otherwise this fails with one line naming the module.
    """
    import torch

    try:
        state = torch.load(checkpoint, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {checkpoint}: no such file") from None
    except Exception as err:  # unpickling errors come in many types
        raise ConfigError(f"checkpoint {checkpoint}: cannot load with weights_only=True ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    info = state.get(CHECKPOINT_KEY) if isinstance(state, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("scorer"), str) or not isinstance(info.get("hparams"), dict):
        raise ConfigError(f"checkpoint {checkpoint}: no valid '{CHECKPOINT_KEY}' entry (not written by spider fit)")
    name = info["scorer"]
    if name not in list_scorers():
        module = info.get("module") if isinstance(info.get("module"), str) else None
        hint = (f"import the module {module!r} first (imports=[{module}] or --imports {module})" if module
                else "import the module that registers it first")
        raise ConfigError(f"checkpoint {checkpoint}: scorer {name!r} is not registered; {hint}")
    if not isinstance(state.get("state_dict"), dict):
        raise ConfigError(f"checkpoint {checkpoint}: no 'state_dict' mapping of weights")
    bad = next((k for k, v in state["state_dict"].items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # a NaN weight would rank (or go on training) as NaN scores
        raise ConfigError(f"checkpoint {checkpoint}: weight {bad!r} holds non-finite values")
    try:  # hyperparameters and weights come from the file: a bad one is a bad checkpoint
        model = _scorer_class(name)(**info["hparams"])
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, SpiderError) as err:
        raise ConfigError(f"checkpoint {checkpoint}: invalid hyperparameters for scorer {name!r} "
                          f"({type(err).__name__}: {_first_line(err)})") from None
    try:
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"checkpoint {checkpoint}: its weights do not fit scorer {name!r} with its own "
                          f"hyperparameters ({_first_line(err)})") from None
    model.eval()
    model.spider_info = info
    return model


def import_plugins(modules: Sequence[str]) -> None:
    """Import user modules whose decorators register scorers, losses or baselines (user-given
    names only, never names read from a file)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"imports: cannot import module {name!r} ({err})") from None


def load_entry_points() -> None:
    """Import the scorers installed packages declare in the ``spider.scorers`` entry-point group."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def _first_line(err: BaseException) -> str:
    """A short one-line summary (torch's shape-mismatch errors span many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0] if len(lines) == 1 or not lines[0].endswith(":") else f"{lines[0]} {lines[1]}"
    return text[:240]


def _scorer_class(name: str) -> type:
    if name not in list_scorers():
        load_entry_points()
    try:
        return get_scorer(name)
    except Exception as err:
        raise ConfigError(f"config key 'model.scorer': {str(err).splitlines()[0]}") from None
