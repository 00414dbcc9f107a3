"""torchrun's environment, the exit-code file and the `--nproc` launcher; imports no torch.

`sslall round` refuses a busy workspace (exit 75) before anything heavy loads, and records
that code for a launcher; so what the refusal and `--nproc` need lives here, apart from the
process-group helpers in `sslall.model._distributed` that import torch.

torchrun reports a failed worker as exit code 1, whatever the worker's own code. So rank 0
writes its exit code to the file `$SSLALL_EXIT_FILE` names, when set; `sslall round --nproc N`
sets it and exits with that code (75 when another round holds the lock).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ENV_EXIT_FILE", "launch", "record_exit_code", "world_size_from_env"]

ENV_EXIT_FILE = "SSLALL_EXIT_FILE"


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
    """Run `python -m torch.distributed.run --nproc_per_node N -m sslall ARGV`; its exit code.

    The code is rank 0's own (from `$SSLALL_EXIT_FILE`) when it recorded one, so a busy lock
    still exits 75; otherwise torchrun's. torchrun's log folders go into a temporary folder
    removed at the end (left to itself, torchelastic makes one in the temp folder and never
    removes it).
    """
    with tempfile.TemporaryDirectory(prefix="sslall-launch-", ignore_cleanup_errors=True) as tmp:
        exit_file = Path(tmp) / "exit-code"
        env = {**os.environ, ENV_EXIT_FILE: str(exit_file), "OMP_NUM_THREADS":
               os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", f"--log-dir={Path(tmp) / 'torchrun'}", "-m", "sslall", *argv]
        code = subprocess.run(cmd, env=env, check=False).returncode
        if exit_file.is_file():
            return int(exit_file.read_text(encoding="ascii").strip() or code)
        return code
