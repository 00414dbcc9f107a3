"""The one progress callback of sslall: `progress(step, done, total)`.

The library never prints; long work (verifying files, extracting features, training, scoring,
importing, checking) reports through this instead, and the CLI draws it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress"]


class Progress(Protocol):
    """Called as work advances: `done` of `total` units of the step named `step` are finished.

    A step is one stage of the work ("verify", "features", "train", "score", "test",
    "import", ...); each counts on its own (the CLI draws one bar per step), and its unit is the
    step's own (images, epochs, optimizer steps, report sections).
    """

    def __call__(self, step: str, done: int, total: int, /) -> None: ...
