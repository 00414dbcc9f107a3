"""Named points where a test can freeze a running round to kill it (crash-safety tests).

With `SSLALL_PAUSE_AT=<point>` and `SSLALL_PAUSE_FILE=<path>` in the environment, reaching that
point writes the file and sleeps, so a test can SIGKILL the process exactly there. Without the
variables a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = ("verify", "train", "features-done", "score", "calibrate", "select", "route", "record",
          "checkpoint-written", "run-dir-renamed")


def fault_point(name: str) -> None:
    """Pause here forever when the environment asks for it (see the module docstring)."""
    if os.environ.get("SSLALL_PAUSE_AT") != name:
        return
    marker = os.environ.get("SSLALL_PAUSE_FILE")
    if marker:
        Path(marker).write_text(f"{os.getpid()} {name}\n")
    time.sleep(3600)
