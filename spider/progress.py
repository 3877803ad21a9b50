"""The one progress display of the package (pipeline stages, label builds, baseline scoring).

``with progress_bar(total, "what", enabled) as advance: ... advance(n)``: a rich bar on a terminal,
else a plain line every ``every`` seconds and at the end (readable in a log file; none for a
``transient`` display); nothing when disabled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["log_line", "progress_bar"]


def log_line(message: str) -> None:
    """One timestamped progress line on stdout, flushed (the benchmark scripts' log)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class progress_bar:
    """Progress over ``total`` steps (``completed`` of them already done); the context value is
    ``advance(n=1)``."""

    def __init__(self, total: int, description: str, enabled: bool, every: float = 30.0, *,
                 completed: int = 0, transient: bool = False) -> None:
        self.total, self.description, self.enabled, self.every = total, description, enabled, every
        self.transient = transient
        self.bar = None
        self.done = completed

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda n=1: None
        if not sys.stdout.isatty():
            if self.transient:  # a passing display: nothing to keep in a log file
                return lambda n=1: None
            self.start = self.last = time.perf_counter()
            return self._advance_plain
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), transient=self.transient)
        self.bar.start()
        task = self.bar.add_task(self.description, total=self.total, completed=self.done)
        return lambda n=1: self.bar.advance(task, n)

    def _advance_plain(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            print(f"{self.description}: {self.done}/{self.total} ({now - self.start:.0f} s)", flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
