"""Exception types shared by every spider module, and how a CLI reports them.

Every user-facing failure is a ``SpiderError`` (or subclass) whose message is one line naming the
file, field or argument at fault and what was expected. CLIs print it as ``error: <message>`` and
exit with 2 (:func:`cli_main`).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn


class SpiderError(Exception):
    """Base class for errors caused by bad input or configuration (not by bugs)."""


class StoreError(SpiderError):
    """A feature-store entry is missing, corrupted, truncated or inconsistent."""


class BaselineInputError(SpiderError, ValueError):
    """Inputs to a transferability baseline are malformed (shapes, labels, NaN, ...)."""


class ConfigError(SpiderError, ValueError):
    """A configuration key is unknown or has the wrong type or value."""


class RegistryError(SpiderError, KeyError):
    """A name is not registered (or is registered twice)."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class UsageError(SpiderError):
    """Bad command-line arguments."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as a :class:`UsageError` (one line, exit code 2 under
    :func:`cli_main`) instead of printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def cli_main(*also: type[BaseException]) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator of a CLI's ``main``: a :class:`SpiderError` (or one of ``also``, e.g. ``OSError``)
    ends it with exit code 2 and the one line ``error: <first line of the message>`` on stderr."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except (SpiderError, *also) as err:
                text = str(err).strip()
                print(f"error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
                return 2

        return run

    return decorate
