"""One ``spider fit`` per run directory at a time: ``<run_dir>/.lock`` holds the owner's pid.

The lock is an ``flock`` on that file, taken by global rank 0 before anything is written to the
run directory and released when the run ends (the kernel also releases it when the process dies,
so a lock file left by a killed run is simply taken over). A second run on the same directory
fails at once with one line naming the holder's pid. DDP children (launched by rank 0, which
holds the lock) do not take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from spider.errors import SpiderError

__all__ = ["LOCK_NAME", "RunDirLocked", "run_dir_lock"]

LOCK_NAME = ".lock"
_HELD: set[str] = set()  # run dirs this process holds (the lock is re-entrant within a process)


class RunDirLocked(SpiderError):
    """Another live process holds the run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` for the duration of the block (rank 0 only; re-entrant)."""
    from spider.run_inputs import env_rank

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if env_rank() != 0 or key in _HELD:
        yield
        return
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpiderError(f"config key 'run_dir': cannot create {run_dir} ({err.strerror})") from None
    path = run_dir / LOCK_NAME
    fd = _acquire(path)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        # Unlink before unlocking: a waiter that opened the old file sees it replaced and retries.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        if created:  # a run that failed before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _acquire(path: Path) -> int:
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunDirLocked(f"config key 'run_dir': {path.parent} is in use by another spider fit "
                               f"(pid {holder or 'unknown'}, lock file {path}); wait for it or pick another "
                               "run_dir") from None
        # The holder may have unlinked the file between our open and flock: lock the current file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
    raise RunDirLocked(f"config key 'run_dir': could not lock {path} (replaced 100 times while locking)")


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
