"""Worker processes (the import pool, DataLoader workers) that die with their parent, never
hold its workspace lock, and can always hand their results back."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["die_with_parent", "fit_socket_folder", "keep_from_workers", "worker_started"]

_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.2
_lock_fds: set[int] = set()  # fds of locks held by this process; a forked worker closes them
_SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path on Linux (sun_path is 108 with its NUL)
_FOLDER = len("/pymp-12345678")  # multiprocessing's folder in the temp folder
_LISTENER = len("/listener-12345678")  # a listener socket in it
_SHORT_FOLDERS = ("/tmp", "/var/tmp", "/usr/tmp")



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
    die_with_parent(parent_pid, signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="sslall-parent-watch").start()


def die_with_parent(parent_pid: int, sig: int) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (`PR_SET_PDEATHSIG`; kept
    across exec); exits at once if the parent, `parent_pid`, is already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def fit_socket_folder() -> bool:
    """Give multiprocessing a temp folder short enough for its Unix sockets, before workers fork.

    A DataLoader worker hands each batch back by file descriptor, through a listener socket in
    multiprocessing's temp folder (`$TMPDIR/pymp-*`). With a long TMPDIR (a scheduler's
    per-job folder) the socket's path passes 107 bytes, binding fails in the worker's feeder
    thread, the batch is dropped and the loader waits for it forever. Python 3.13 falls back
    to /tmp by itself; this does the same on older versions. The folder is multiprocessing's
    own, removed at exit as usual; forked workers inherit the choice. False when no folder
    fits: the caller then decodes in its own process.
    """
    import multiprocessing.process
    import multiprocessing.util

    made = multiprocessing.process.current_process()._config.get("tempdir")
    if made is not None:  # already made (and maybe used) by this process
        return _fits(made, _LISTENER)
    if _fits(tempfile.gettempdir(), _FOLDER + _LISTENER):
        return True
    for folder in _SHORT_FOLDERS:
        if Path(folder).is_dir() and os.access(folder, os.W_OK | os.X_OK):
            saved = tempfile.tempdir
            tempfile.tempdir = folder  # only while multiprocessing makes its folder
            try:
                multiprocessing.util.get_temp_dir()
            finally:
                tempfile.tempdir = saved
            return True
    return False


def _fits(folder: str, name_bytes: int) -> bool:
    return len(os.fsencode(folder)) + name_bytes <= _SOCKET_PATH_MAX
