"""Helpers for the worker processes spider starts (label builds, zoo builds).

Why: a worker blocked on its task queue holds that queue's write end itself, so it never sees
end-of-file when the parent is killed (``kill -9``) and would live on forever, orphaned, with its
memory. :func:`exit_with_parent`, called from a pool's initializer, ends the worker instead.

How: every ``multiprocessing`` child has a *parent sentinel* - the read end of a pipe whose write
end only the parent holds - that becomes readable when the parent dies, whatever the platform or
start method. A daemon thread waits on it (no polling) and exits the process at once.
``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the parent *thread* that started the worker
ends, and ``multiprocessing.Pool`` restarts dead workers from a helper thread.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from multiprocessing.connection import wait

__all__ = ["PARENT_DIED_EXIT_CODE", "exit_with_parent"]

PARENT_DIED_EXIT_CODE = 70  # what a worker exits with when its parent died (EX_SOFTWARE)
_watching = False


def exit_with_parent() -> bool:
    """Make this worker process exit as soon as its parent process dies.

    Call it from a pool's ``initializer``. The exit is immediate (``os._exit``, like ``kill -9``:
    no clean-up runs), which the writers of spider tolerate: they write temp names and rename them,
    so a dead worker leaves no torn file (at most a hidden temp file). Returns False (and does
    nothing) outside a ``multiprocessing`` child.
    """
    global _watching
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    if _watching:  # an initializer may run in a process that already watches (one thread is enough)
        return True
    _watching = True
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])  # returns once the parent's end of the pipe is closed
        os._exit(PARENT_DIED_EXIT_CODE)

    threading.Thread(target=watch, name="spider-exit-with-parent", daemon=True).start()
    return True
