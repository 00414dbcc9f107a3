"""Removing old round folders (`runs.keep_last`, `sslall prune`).

Kept: the folders of the last N committed rounds, the promoted round, the best round by holdout
macro-F1 and the round the model commands use now. Only folders of committed rounds are ever
removed (a folder of a round the store does not record belongs to a killed round, and the next
round replaces it), and only by a caller that holds the round lock (`run_round` after its commit,
`sslall prune`). A folder is first renamed to `.pruned-round-NNNN` and then deleted, so a prune
killed half-way never leaves a half-deleted `round-NNNN` that looks usable; the next prune
finishes such a leftover.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sslall._fsutil import fsync_dir
from sslall.model._choice import has_checkpoint, model_choice
from sslall.store._pools import PoolStore
from sslall.store._promotion import best_round, promoted
from sslall.workspace import Workspace

__all__ = ["PRUNED_PREFIX", "PrunePlan", "plan_prune", "prune_runs"]

PRUNED_PREFIX = ".pruned-round-"


@dataclass
class PrunePlan:
    """Round folders to keep (with why) and to remove, for `keep_last` (0 = keep all)."""

    keep_last: int
    keep: dict[int, list[str]] = field(default_factory=dict)
    remove: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"keep_last": self.keep_last,
                "keep": [{"round": r, "why": why} for r, why in sorted(self.keep.items())],
                "remove": self.remove}


def plan_prune(ws: Workspace, store: PoolStore, keep_last: int) -> PrunePlan:
    """Which committed rounds' folders to keep and which to remove (nothing is touched)."""
    plan = PrunePlan(keep_last)
    rounds = store.rounds()
    present = [r["round"] for r in rounds if ws.round_dir(r["round"]).exists()]
    if keep_last == 0:
        plan.keep = {r: ["keep_last = 0 keeps every round"] for r in present}
        return plan
    reasons: dict[int, list[str]] = {}
    for r in [r["round"] for r in rounds][-keep_last:]:
        reasons.setdefault(r, []).append(f"one of the last {keep_last}")
    entry = promoted(store)
    if entry is not None:
        reasons.setdefault(entry.round, []).append("promoted")
    best = best_round(rounds, lambda r: has_checkpoint(ws, r))
    if best is not None:
        reasons.setdefault(best[0], []).append(f"best holdout macro-F1 {best[1]:.3f}")
    choice = model_choice(ws, store)
    if choice is not None:
        reasons.setdefault(choice.round, []).append("in use")
    plan.keep = {r: why for r, why in reasons.items() if r in present}
    plan.remove = [r for r in present if r not in reasons]
    return plan


def prune_runs(ws: Workspace, store: PoolStore, keep_last: int, *,
               dry_run: bool = False) -> PrunePlan:
    """Remove the folders `plan_prune` does not keep (and earlier prunes' leftovers); the caller
    holds the round lock. With `dry_run`, only the plan.

    Raises:
        OSError: a folder cannot be renamed or removed (the others stay as they were).
    """
    plan = plan_prune(ws, store, keep_last)
    if dry_run:
        return plan
    for r in plan.remove:
        folder = ws.round_dir(r)
        doomed = folder.with_name(f"{PRUNED_PREFIX}{r:04d}")
        if folder.is_symlink():  # never follow a link out of the workspace
            folder.unlink()
            continue
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(folder, doomed)
    if plan.remove:
        fsync_dir(ws.runs_dir)
    for leftover in _pruned_leftovers(ws.runs_dir):
        if leftover.is_symlink() or not leftover.is_dir():
            leftover.unlink()
        else:
            shutil.rmtree(leftover)
    return plan


def _pruned_leftovers(runs: Path) -> list[Path]:
    try:
        return sorted(p for p in runs.iterdir() if p.name.startswith(PRUNED_PREFIX))
    except FileNotFoundError:
        return []
