"""Exception types shared by every spider module.

Every user-facing failure is a ``SpiderError`` (or subclass) whose message is one line naming the
file, field or argument at fault and what was expected. CLIs print ``str(err)`` and exit with 2.
"""


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
