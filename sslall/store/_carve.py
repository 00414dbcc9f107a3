"""Carving a holdout out of the labeled pool after import (`sslall holdout carve`).

A lab that imported its labels without `--holdout-fraction` gets a holdout later: a stratified
share of the labeled pool (whole patients when patients are known, by `HoldoutPlanner`, the rule
an import uses) moves to `holdout` through `PoolStore.apply_moves`, one event per cell with the
reason "carved as holdout", in one transaction. A carve that would leave a class with no labeled
cell is refused: rounds need every class in the labeled pool. The caller holds the round lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sslall.errors import UsageError
from sslall.store._holdout import HoldoutPlanner
from sslall.store._pools import PoolStore
from sslall.store._records import Move

__all__ = ["CARVE_ACTOR", "CARVE_REASON", "CarveReport", "carve_holdout"]

CARVE_REASON = "carved as holdout"
CARVE_ACTOR = "carve"


@dataclass
class CarveReport:
    """What a carve moved (cells per class), whether it went by patient, and the pools after."""

    fraction: float
    by_patient: bool
    moved: dict[str, int]
    labeled: dict[str, int]
    holdout: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.moved.values())

    def as_dict(self) -> dict:
        return {"fraction": self.fraction, "by_patient": self.by_patient, "moved": self.moved,
                "total": self.total, "labeled": self.labeled, "holdout": self.holdout}


def carve_holdout(store: PoolStore, classes: Sequence[str], fraction: float, *,
                  seed: int = 0) -> CarveReport:
    """Move a stratified `fraction` of the labeled pool to the holdout (see the module docstring).

    Raises:
        UsageError: `fraction` is not in (0, 1), the labeled pool is empty, or the carve would
            leave a class with no labeled cell (nothing is moved).
    """
    if not 0 < fraction < 1:
        raise UsageError(f"--fraction must be between 0 and 1 (exclusive), got {fraction}")
    labeled = list(store.samples("labeled"))
    if not labeled:
        raise UsageError("the labeled pool is empty: there is nothing to carve a holdout from")
    planner = HoldoutPlanner(labeled, fraction, seed)
    chosen = [s for s in labeled if planner.is_holdout(s)]
    before = Counter(s.label for s in labeled)
    moved = Counter(s.label for s in chosen)
    emptied = [str(c) for c in before if before[c] - moved[c] < 1]
    if emptied:
        raise UsageError(f"carving {fraction:g} would leave no labeled cell of class(es) "
                         f"{', '.join(sorted(emptied))}; every class needs one to train on "
                         "(use a smaller --fraction, or add labeled cells first)")
    moves = [Move(s.id, "holdout", from_pool="labeled", label=s.label,
                  label_source=s.label_source, confidence=s.confidence,
                  prediction=s.prediction, reason=CARVE_REASON) for s in chosen]
    if moves:
        store.apply_moves(moves, round_no=store.last_round(), actor=CARVE_ACTOR)
    counts = store.counts()
    return CarveReport(
        fraction, any(s.patient for s in labeled),
        {c: moved.get(c, 0) for c in classes},
        {c: counts["labeled"].get(c, 0) for c in classes},
        {c: counts["holdout"].get(c, 0) for c in classes})
