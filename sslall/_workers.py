"""Worker processes (the import pool, DataLoader workers) that die with their parent and never
hold its workspace lock."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["keep_from_workers", "worker_started"]

_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.2
_lock_fds: set[int] = set()  # fds of locks held by this process; a forked worker closes them



def keep_from_workers(fd: int, held: bool = True) -> None:
    """Register (or, `held` False, forget) a lock fd that forked workers must not keep open.

    A forked child shares the parent's open file descriptions, and an `flock` lives until
    every copy is closed: a worker that outlived a killed parent would hold the lock.
    """
    (_lock_fds.add if held else _lock_fds.discard)(fd)


def worker_started(parent_pid: int) -> None:
    """Initializer of every worker process sslall starts (import pool, DataLoader workers).

    Closes the parent's lock fds (a copy closed in the child leaves the parent's lock held),
    asks Linux to SIGKILL this process when its parent dies (`PR_SET_PDEATHSIG`), and watches
    the parent's pid from a daemon thread elsewhere (and as a backstop), so no worker outlives
    the command that started it.
    """
    for fd in list(_lock_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="sslall-parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)
