"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

Every writer under ``spider/`` goes through :func:`write_atomic` (the feature store keeps its own
versioned-directory scheme). Temp files are hidden siblings named ``.<name>.tmp-<host>-<pid>`` so
that :func:`clean_temp_files` can remove those of killed writers on this host while leaving a live
writer's, or another host's on a shared file system, alone.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["clean_temp_files", "jsonable", "write_atomic", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic", "write_text_if_changed"]

_HOST = socket.gethostname().replace("-", "_") or "host"


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, flush it to disk, rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename must not reach the disk before the data (power loss)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """:func:`write_atomic` for writers of an open binary file (``np.savez``, ``torch.save``: given a
    path, numpy would append ``.npz`` to the temp name)."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    write_atomic(path, to_file)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds it (keeps mtimes of unchanged outputs)."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)
    return True


def jsonable(value: Any) -> Any:
    """Plain JSON values: mappings and sequences recursively, non-finite floats as null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 2, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(jsonable(data), indent=indent, sort_keys=sort_keys) + "\n")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. PermissionError: the pid runs under another user
        return True
    return True


def clean_temp_files(root: str | os.PathLike) -> None:
    """Remove temp files of :func:`write_atomic` in ``root`` left by killed writers on this host.

    Temp files of other hosts (a folder on a shared file system) are left alone: their writer may
    be alive, and a stale one is a hidden file that no reader looks at.
    """
    for tmp in Path(root).glob(".*.tmp-*"):
        host, _, pid = tmp.name.split(".tmp-", 1)[1].rpartition("-")
        if host and host != _HOST:
            continue
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
