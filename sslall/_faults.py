"""Named points where a test can freeze a running command to kill it (crash-safety tests).

With `SSLALL_PAUSE_AT=<point>` and `SSLALL_PAUSE_FILE=<path>` in the environment, reaching that
point writes the file and waits until the file is removed (then carries on) or an hour has
passed, so a test can SIGKILL the process exactly there, or do something else (kill a server)
and let it go on. Without the variables a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# The steps of a round (`sslall round` reaches every one of them).
POINTS = ("verify", "train", "features-done", "score", "calibrate", "select", "route", "record",
          "checkpoint-written", "run-dir-renamed")
# Label Studio (sslall/labelstudio/_push.py, _pull.py): "labelstudio-push" after the server created a
# batch of tasks and before the store recorded them; "labelstudio-pull" after a page of
# annotations was decided and before its moves were committed.
# `sslall review import` (sslall/store/_review_csv.py): "review-import" once every answer is
# decided, before the one transaction that applies them.


def fault_point(name: str) -> None:
    """Pause here when the environment asks for it (see the module docstring)."""
    if os.environ.get("SSLALL_PAUSE_AT") != name:
        return
    marker = os.environ.get("SSLALL_PAUSE_FILE")
    if not marker:
        time.sleep(3600)
        return
    Path(marker).write_text(f"{os.getpid()} {name}\n")
    deadline = time.monotonic() + 3600
    while Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
