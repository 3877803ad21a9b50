"""A tiny decorator registry in the style of timm (``register_model`` / ``list_models``).

One ``Registry`` instance exists per kind of thing (baselines, scorers, losses, zoo models); each
module exposes thin ``register_x`` / ``get_x`` / ``list_x`` wrappers around it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from spider.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects plus free-form metadata.

    Example:
        >>> losses = Registry("loss")
        >>> @losses.register("mse")
        ... def mse(pred, target): ...
        >>> losses.list("m*")
        ['mse']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator registering the decorated object under ``name`` with ``meta``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if not name or not isinstance(name, str):
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        self._meta[name] = dict(meta)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; available: {known}") from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the shell-style ``pattern`` (e.g. ``"log*"``)."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)
