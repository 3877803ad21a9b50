"""Publishing versions of feature-store entries (see :mod:`spider.store` for the layout).

A writer publishes a finished temp directory as a new ``.v-*`` version under the entry's flock,
swaps the entry's symlink to it atomically (or exchanges a plain pre-version directory with it),
then garbage-collects older versions and the leftovers of writers that died.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spider.errors import StoreError
from spider.io import pid_alive

# The file whose presence makes a directory a complete entry (written last, fsynced first).
MANIFEST = "manifest.json"


def _pointer(path: Path) -> tuple[str, Any] | None:
    """What the entry name ``path`` holds now: ("link", target), ("dir", inode) for a plain
    directory (a store written before versions existed), or None."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return "link", os.readlink(path)
    except OSError:
        return None
    return ("dir", st.st_ino) if stat.S_ISDIR(st.st_mode) else None


@contextlib.contextmanager
def _publish_lock(final: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``.lock-<split>`` while publishing; the kernel releases it
    when its holder dies, so a killed writer never blocks the next one."""
    fd = os.open(final.parent / f".lock-{final.name}", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _publish(tmp: Path, final: Path, overwrite: bool) -> str:
    """Make the finished temp dir ``tmp`` the current version of the entry ``final``; return
    the version's name. Called under the publish lock. Every state a kill can leave between two
    steps has a complete entry at ``final`` (the old one until the swap, then the new one)."""
    parent, split = final.parent, final.name
    if _pointer(final) is None:
        _restore_displaced(final)
    current = _pointer(final)
    if current is not None and not overwrite and (final / MANIFEST).is_file():  # another writer was first
        raise StoreError(f"{final}: entry exists (pass overwrite=True to replace it)")
    version = f".v-{split}-{uuid.uuid4().hex}"
    os.rename(tmp, parent / version)
    link = parent / f".tmp-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.symlink(version, link)
    displaced = _swap(link, final, plain_dir=current is not None and current[0] == "dir")
    _fsync_dir(parent)
    if displaced is not None:
        _remove(displaced)
    _collect(parent, split, keep=version)
    return version


def _swap(link: Path, final: Path, plain_dir: bool) -> Path | None:
    """Atomically replace ``final`` by the symlink ``link``; return where a replaced plain
    directory now is (None if ``final`` was a symlink or nothing)."""
    if not plain_dir:
        os.replace(link, final)  # a symlink (or nothing) is replaced in one step
        return None
    # A plain entry directory cannot be renamed over: exchange it with the link in one step,
    # which leaves the old directory under the link's temp name.
    if _exchange(link, final):
        return link
    # No atomic exchange on this filesystem: between these two renames there is no entry; if the
    # writer dies there, the next writer's _restore_displaced puts the old directory back.
    old = final.parent / f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    os.rename(link, final)
    return old


def _collect(parent: Path, split: str, keep: str) -> None:
    """Delete the versions of ``split`` other than ``keep`` (called under the publish lock, so
    no writer is between creating a version and publishing it) and the temp dirs of writers
    that died. Readers that already opened a deleted version keep reading their memory maps."""
    for p in parent.iterdir():
        kind, pid = _hidden(p.name, split)
        if (kind == "v" and p.name != keep) or (kind in ("tmp", "old") and not pid_alive(pid)):
            _remove(p)


def _restore_displaced(final: Path) -> None:
    """After a writer died between the two renames of _swap's fallback, move the old entry back."""
    for p in sorted(final.parent.iterdir()):
        kind, pid = _hidden(p.name, final.name)
        if kind == "old" and not pid_alive(pid) and (p / MANIFEST).is_file():
            os.rename(p, final)
            return


def _hidden(name: str, split: str) -> tuple[str | None, int | None]:
    """("v", None) for a version of ``split``, ("tmp" or "old", pid) for a writer's temp name
    (``.tmp-<split>-<pid>-<hex>``, also a pending symlink), else (None, None). ``split`` may
    contain '-': the fixed-format tail after it tells the names of two splits apart."""
    for kind, tail in (("v", r"[0-9a-f]{32}"), ("tmp", r"(\d+)-[0-9a-f]{8}"), ("old", r"(\d+)-[0-9a-f]{8}")):
        prefix = f".{kind}-{split}-"
        if name.startswith(prefix) and (match := re.fullmatch(tail, name[len(prefix):])):
            return kind, int(match.group(1)) if match.groups() else None
    return None, None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the names ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE); False if the
    platform or filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _version() -> str:
    from spider import __version__

    return __version__
