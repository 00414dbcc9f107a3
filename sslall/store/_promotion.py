"""Which round's model a lab uses: the stored promotion, and the rule that picks a round.

`sslall promote ROUND` appends a row (round, who, when) to the store's `promotions` table and
`sslall promote --clear` a row with no round; the last row is the promotion in force, and the
rows are the audit trail. (The sample event log cannot carry it: every event names a sample,
and `sslall check` replays events per sample.)

Without a promotion the model is the best committed round by holdout macro-F1 (ties go to the
later round), among rounds whose checkpoint folder is still there; when no round has holdout
metrics, the last round. Plain SQLite and dicts: nothing here knows torch or the workspace.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from sslall.store._pools import PoolStore
from sslall.store._records import utc_now

__all__ = ["ModelChoice", "Promotion", "best_round", "choose_round", "promoted",
           "promotion_log", "record_promotion"]


@dataclass(frozen=True)
class Promotion:
    """One `sslall promote` (round None: `--clear`), who ran it and when (UTC, ISO 8601)."""

    round: int | None
    by: str
    at: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelChoice:
    """The round whose model `predict`, `evaluate`, `explain` and `label push` use, and why:
    `why` is "promoted", "best" (by holdout macro-F1, in `macro_f1`) or "latest"."""

    round: int
    why: str
    macro_f1: float | None = None

    def describe(self) -> str:
        """'promoted', 'best holdout macro-F1 0.910' or 'latest'."""
        if self.why == "best":
            return f"best holdout macro-F1 {self.macro_f1:.3f}"
        return self.why

    def as_dict(self) -> dict:
        return {**asdict(self), "reason": self.describe()}


def promotion_log(store: PoolStore) -> list[Promotion]:
    """Every promotion and clearing, oldest first ([] for a store that never had one)."""
    try:
        rows = store.conn.execute(
            "SELECT round, actor, time FROM promotions ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # a read-only store from before the table
        return []
    return [Promotion(r, by, at) for r, by, at in rows]


def promoted(store: PoolStore) -> Promotion | None:
    """The promotion in force, or None when nothing is promoted (never, or cleared)."""
    try:
        row = store.conn.execute(
            "SELECT round, actor, time FROM promotions ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # a read-only store from before the table
        return None
    return Promotion(*row) if row and row[0] is not None else None


def record_promotion(store: PoolStore, round_no: int | None, by: str) -> Promotion:
    """Append a promotion of `round_no` (None clears it); the caller checked the round.

    Raises:
        sqlite3.OperationalError: the store cannot be written (a read-only workspace).
    """
    entry = Promotion(round_no, by, utc_now())
    with store.transaction():
        store.conn.execute("INSERT INTO promotions (round, actor, time) VALUES (?, ?, ?)",
                           (entry.round, entry.by, entry.at))
    return entry


def best_round(rounds: Sequence[dict], has_checkpoint: Callable[[int], bool]
               ) -> tuple[int, float] | None:
    """(round, holdout macro-F1) of the best round with a checkpoint; ties go to the later round;
    None when no such round has holdout metrics. `rounds` are `PoolStore.rounds()` records."""
    best: tuple[int, float] | None = None
    for r in rounds:
        f1 = (r.get("metrics") or {}).get("macro_f1")
        if f1 is None or not has_checkpoint(r["round"]):
            continue
        if best is None or (f1, r["round"]) >= (best[1], best[0]):
            best = (r["round"], float(f1))
    return best


def choose_round(rounds: Sequence[dict], promoted_round: int | None,
                 has_checkpoint: Callable[[int], bool]) -> ModelChoice | None:
    """The promoted round, else the best by holdout macro-F1, else the last; None with no rounds.

    A promoted round is returned even when its folder is gone: the caller says so rather than
    silently using another model.
    """
    if promoted_round is not None:
        return ModelChoice(promoted_round, "promoted")
    best = best_round(rounds, has_checkpoint)
    if best is not None:
        return ModelChoice(best[0], "best", best[1])
    if not rounds:
        return None
    return ModelChoice(max(r["round"] for r in rounds), "latest")
