"""Memory sampling of a process tree from /proc (Linux), for the benchmarks.

`TreeSampler(pid)` polls, every `interval` seconds in a thread, VmRSS and VmHWM of the process
and of all its descendants (worker processes), and keeps the peaks and a timeline. Summed RSS
counts pages a forked worker shares with its parent twice; the PSS sum (smaps_rollup, shared
pages split between their users) does not, so it is the tree's real footprint. An optional
`probe()` callable adds one value per sample (e.g. the committed row count of a database).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def status_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process (its own: `os.getpid()`) in KiB, or None if it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return rss, hwm


def _pss_kib(pid: int) -> int:
    """Proportional set size in KiB (0 if the process is gone or the file is unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (via /proc/PID/task/TID/children, else a /proc scan)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids = _children(parent)
        out += kids
        todo += kids
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                    kids += [int(k) for k in fh.read().split()]
            except OSError:
                continue
        return kids
    except OSError:
        pass
    for entry in os.listdir("/proc"):  # fallback: scan for ppid
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    main_rss: int  # bytes
    main_hwm: int  # bytes: peak RSS of the main process so far
    children_rss: int  # bytes, summed over live descendants
    tree_rss: int  # main + children, bytes
    n_children: int
    tree_pss: int = 0  # bytes, main + live descendants, shared pages counted once in all
    probe: object = None


@dataclass
class TreeSampler:
    """Poll a process tree's memory every `interval` seconds until `stop()`."""

    pid: int
    interval: float = 0.2
    probe: Callable[[], object] | None = None
    samples: list[Sample] = field(default_factory=list)
    child_hwm: dict[int, int] = field(default_factory=dict)  # pid -> peak RSS bytes

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def start(self) -> TreeSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> TreeSampler:
        self._stop.set()
        self._thread.join()
        return self

    def _run(self) -> None:
        while True:
            self.sample_once()
            if self._stop.wait(self.interval):
                self.sample_once()
                return

    def sample_once(self) -> None:
        main = status_kib(self.pid)
        if main is None or main == (0, 0):  # gone, or a zombie (no memory lines)
            return
        kids_rss = 0
        pss = _pss_kib(self.pid)
        kids = descendants(self.pid)
        for kid in kids:
            st = status_kib(kid)
            if st is None:
                continue
            kids_rss += st[0]
            pss += _pss_kib(kid)
            self.child_hwm[kid] = max(self.child_hwm.get(kid, 0), st[1] * 1024)
        value = None
        if self.probe is not None:
            try:
                value = self.probe()
            except Exception:  # noqa: BLE001 - a failed probe must not stop the sampling
                value = None
        self.samples.append(Sample(
            round(time.perf_counter() - self._t0, 3), main[0] * 1024, main[1] * 1024,
            kids_rss * 1024, (main[0] + kids_rss) * 1024, len(kids), pss * 1024, value,
        ))

    # -- summaries ----------------------------------------------------------------------

    @property
    def peak_main_hwm(self) -> int:
        return max((s.main_hwm for s in self.samples), default=0)

    @property
    def peak_tree_rss(self) -> int:
        return max((s.tree_rss for s in self.samples), default=0)

    @property
    def peak_tree_pss(self) -> int:
        return max((s.tree_pss for s in self.samples), default=0)

    @property
    def peak_child_hwm(self) -> int:
        return max(self.child_hwm.values(), default=0)
