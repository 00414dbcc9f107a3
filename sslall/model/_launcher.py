"""torchrun's environment, the exit-code file and the `--nproc` launcher; imports no torch.

`sslall round` refuses a busy workspace (exit 75) before anything heavy loads, and records
that code for a launcher; so what the refusal and `--nproc` need lives here, apart from the
process-group helpers in `sslall.model._distributed` that import torch.

torchrun reports a failed worker as exit code 1, whatever the worker's own code. So rank 0
writes its exit code to the file `$SSLALL_EXIT_FILE` names, when set; `sslall round --nproc N`
sets it and exits with that code (75 when another round holds the lock). torchrun runs in a
process group of its own: a SIGTERM, SIGINT or SIGHUP for the launcher (or a terminal's Ctrl-C)
reaches it once, passed on by the launcher, which waits while it stops its ranks; and if the
launcher is killed outright, Linux sends torchrun a SIGTERM. No rank outlives the command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sslall._workers import die_with_parent

__all__ = ["ENV_EXIT_FILE", "launch", "record_exit_code", "world_size_from_env"]

ENV_EXIT_FILE = "SSLALL_EXIT_FILE"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when unset or unreadable."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def record_exit_code(code: int) -> None:
    """Write `code` to `$SSLALL_EXIT_FILE` (when set) so a launcher can exit with it."""
    path = os.environ.get(ENV_EXIT_FILE)
    if path:
        Path(path).write_text(f"{int(code)}\n", encoding="ascii")


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `torchrun --nproc_per_node N -m sslall ARGV` (through `_torchrun`); its exit code.

    The code is rank 0's own (from `$SSLALL_EXIT_FILE`) when it recorded one, so a busy lock
    still exits 75; otherwise torchrun's. torchrun's log folders go into a temporary folder
    removed at the end (left to itself, torchelastic makes one in the temp folder and never
    removes it). Stopped by a signal, it returns 128 + the signal's number once torchrun is done.
    """
    with tempfile.TemporaryDirectory(prefix="sslall-launch-", ignore_cleanup_errors=True) as tmp:
        exit_file = Path(tmp) / "exit-code"
        env = {**os.environ, ENV_EXIT_FILE: str(exit_file), "OMP_NUM_THREADS":
               os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
        cmd = [sys.executable, "-m", "sslall.model._launcher", "--standalone",
               f"--nproc_per_node={nproc}", f"--log-dir={Path(tmp) / 'torchrun'}", "-m", "sslall", *argv]
        child = subprocess.Popen(cmd, env=env, preexec_fn=_torchrun_started(os.getpid()))
        with _forwarding_signals(child) as received:
            code = child.wait()
        if received:
            return 128 + received[0]
        if exit_file.is_file():
            return int(exit_file.read_text(encoding="ascii").strip() or code)
        return code


def _torchrun_started(launcher_pid: int) -> Callable[[], None]:
    """What the torchrun child does between fork and exec: a process group of its own (a
    terminal's Ctrl-C reaches it once, through the launcher) and a SIGTERM if the launcher dies."""
    def started() -> None:
        os.setpgid(0, 0)
        die_with_parent(launcher_pid, signal.SIGTERM)
    return started


@contextlib.contextmanager
def _forwarding_signals(child: subprocess.Popen) -> Iterator[list[int]]:
    """Pass the stop signals this process gets on to `child` (a `kill` of the launcher alone
    would orphan torchrun and its ranks); yields the numbers received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    before = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        yield received
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _torchrun(argv: list[str]) -> int:
    """The torchrun child (`python -m sslall.model._launcher TORCHRUN-ARGS`): torchrun's own
    `main`, but a stop signal or a rank killed by one ends it with one line, not a traceback
    (a rank that exits with an error has said why itself)."""
    # torchrun's warnings narrate a stop step by step ("Received 15 death signal", "Sending
    # process N closing signal"); the one line below says it, and its errors still show. Its
    # loggers take their level from $LOGLEVEL when made, at import.
    os.environ.setdefault("LOGLEVEL", "ERROR")
    logging.getLogger("torch.distributed.elastic").setLevel(os.environ["LOGLEVEL"])
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(argv)
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        print(f"torchrun: stopped by {name}; its ranks were stopped", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:
            print(f"torchrun: rank {rank} was killed by {failure.signal_name()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
