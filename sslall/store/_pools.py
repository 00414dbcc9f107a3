"""The pool store: every sample, the pool it is in, and an append-only log of every move.

One SQLite file (WAL mode, so readers such as `sslall status` answer while a round writes).
A sample's id is the sha256 of its bytes. Every change of pool or label goes through
`PoolStore.apply_moves`, which writes the rows and their events in one transaction: a process
killed at any point leaves the store as it was before the call or after it, never between.
The rows it reads and the moves it takes are in `sslall.store._records`, its tables in
`sslall.store._schema`. This module knows nothing of torch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sslall.errors import IntegrityError, SslallError, UsageError
from sslall.store._records import (
    HUMAN_SOURCES,
    LABELED_POOLS,
    MACHINE,
    POOLS,
    Move,
    NewSample,
    RoundRecord,
    Sample,
    utc_now,
)
from sslall.store._schema import ensure_schema

__all__ = ["PoolStore"]

_SAMPLE_COLUMNS = ", ".join(Sample.__dataclass_fields__)


class PoolStore:
    """The SQLite pool store of one workspace."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not Path(path).is_file():
            raise UsageError(f"no pool store at {path}; is this a workspace made by `sslall init`?")
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:  # e.g. a full disk cannot hold the WAL index
            raise SslallError(f"cannot open the pool store {path}: {exc}") from None
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        ensure_schema(self.conn, self.path, create=create)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PoolStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    # -- reads --------------------------------------------------------------------------

    def get(self, sample_id: str) -> Sample | None:
        row = self.conn.execute(
            f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE id = ?", (sample_id,)
        ).fetchone()
        return Sample(*row) if row else None

    def samples(
        self, pool: str | Sequence[str] | None = None, *, label: str | None = None,
        batch: int = 5000,
    ) -> Iterator[Sample]:
        """Stream samples, optionally of some pools and one label, in id order."""
        where, params = [], []
        if pool is not None:
            pools = [pool] if isinstance(pool, str) else list(pool)
            where.append(f"pool IN ({', '.join('?' * len(pools))})")
            params += pools
        if label is not None:
            where.append("label = ?")
            params.append(label)
        sql = f"SELECT {_SAMPLE_COLUMNS} FROM samples"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cur = self.conn.execute(sql + " ORDER BY id", params)
        while rows := cur.fetchmany(batch):
            yield from (Sample(*r) for r in rows)

    def counts(self) -> dict[str, dict[str | None, int]]:
        """Sample counts per pool and label (served by the (pool, label) index)."""
        out: dict[str, dict[str | None, int]] = {p: {} for p in POOLS}
        for pool, label, n in self.conn.execute(
            "SELECT pool, label, COUNT(*) FROM samples GROUP BY pool, label"
        ):
            out[pool][label] = n
        return out

    def pool_sizes(self) -> dict[str, int]:
        return {p: sum(c.values()) for p, c in self.counts().items()}

    def find_path(self, path: str) -> tuple[str, str | None] | None:
        """(sample id, label) recorded for a path at import, if any."""
        row = self.conn.execute(
            "SELECT sample_id, label FROM aliases WHERE path = ?", (path,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def rounds(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT round, started_at, finished_at, summary FROM rounds ORDER BY round"
        ).fetchall()
        return [
            {"round": r, "started_at": s, "finished_at": f, **json.loads(summary)}
            for r, s, f, summary in rows
        ]

    def last_round(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()
        return int(row[0])

    def duplicates(self) -> list[tuple[str, str, str]]:
        """(sample id, stored path, other path) for byte-identical files seen at import."""
        return self.conn.execute(
            "SELECT a.sample_id, s.path, a.path FROM aliases a JOIN samples s ON s.id = a.sample_id"
            " WHERE a.path != s.path ORDER BY s.path, a.path"
        ).fetchall()

    def conflicts(self) -> list[tuple[str, str, str | None, str | None]]:
        """(path, sample id, label given, label already stored) for contradicting labels."""
        return self.conn.execute(
            "SELECT path, sample_id, label, existing_label FROM conflicts ORDER BY time"
        ).fetchall()

    # -- writes -------------------------------------------------------------------------

    def add_samples(self, new: Iterable[NewSample], *, round_no: int = 0,
                    actor: str = "import") -> None:
        """Insert new samples with their first event; one transaction for the whole batch."""
        now = utc_now()
        with self.transaction():
            for s in new:
                if s.pool not in POOLS:
                    raise UsageError(f"unknown pool {s.pool!r} (allowed: {', '.join(POOLS)})")
                source = actor if s.label is not None else None
                self.conn.execute(
                    "INSERT INTO samples (id, path, pool, label, label_source, patient, round,"
                    " reason, added_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.id, s.path, s.pool, s.label, source, s.patient, round_no, s.reason, now, now),
                )
                self._event(now, round_no, s.id, None, s.pool, s.label, None,
                            s.reason or "added", actor)
                self.conn.execute(
                    "INSERT OR IGNORE INTO aliases (path, sample_id, label, added_at)"
                    " VALUES (?, ?, ?, ?)", (s.path, s.id, s.label, now),
                )

    def record_alias(self, path: str, sample_id: str, label: str | None) -> None:
        """Remember another path holding the bytes of a stored sample (a duplicate)."""
        self.conn.execute(
            "INSERT OR IGNORE INTO aliases (path, sample_id, label, added_at) VALUES (?, ?, ?, ?)",
            (path, sample_id, label, utc_now()),
        )

    def record_conflict(self, path: str, sample_id: str, label: str | None,
                        existing: str | None) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO conflicts (path, sample_id, label, existing_label, time)"
            " VALUES (?, ?, ?, ?, ?)", (path, sample_id, label, existing, utc_now()),
        )

    def apply_moves(
        self, moves: Sequence[Move], *, round_no: int, actor: str = MACHINE,
        weights: dict[str, float] | None = None, record: RoundRecord | None = None,
    ) -> None:
        """Apply moves (+ sample weights + the round record) in one transaction, or none.

        Raises `IntegrityError` for a move of an unknown sample, a stale `from_pool`, or a
        machine move that would overwrite a human label. A human label is never changed by
        the machine: a labeled sample may only leave `labeled` for `quarantine`.
        """
        now = utc_now()
        with self.transaction():
            for m in moves:
                if m.to_pool not in POOLS:
                    raise UsageError(f"unknown pool {m.to_pool!r} (allowed: {', '.join(POOLS)})")
                cur = self.conn.execute(
                    "SELECT pool, label, label_source FROM samples WHERE id = ?", (m.sample_id,)
                ).fetchone()
                if cur is None:
                    raise IntegrityError(f"move of unknown sample {m.sample_id[:12]}")
                pool, label, source = cur
                if m.from_pool is not None and pool != m.from_pool:
                    raise IntegrityError(
                        f"sample {m.sample_id[:12]} is in {pool}, not {m.from_pool} as the move expects"
                    )
                human = pool in ("labeled", "holdout") and source in HUMAN_SOURCES
                if actor == MACHINE and human and (
                    m.to_pool != "quarantine" and (m.to_pool != pool or m.label != label)
                ):
                    raise IntegrityError(
                        f"refusing a machine move of human-labelled sample {m.sample_id[:12]}"
                    )
                new_label = m.label if m.to_pool in LABELED_POOLS else None
                if m.to_pool == "quarantine":
                    new_label = label
                new_source = m.label_source if m.to_pool in LABELED_POOLS else None
                if m.to_pool == "quarantine":
                    new_source = source
                self.conn.execute(
                    "UPDATE samples SET pool = ?, label = ?, label_source = ?, confidence = ?,"
                    " prediction = ?, round = ?, reason = ?, updated_at = ? WHERE id = ?",
                    (m.to_pool, new_label, new_source, m.confidence, m.prediction, round_no,
                     m.reason or None, now, m.sample_id),
                )
                self._event(now, round_no, m.sample_id, pool, m.to_pool, new_label,
                            m.confidence, m.reason, actor)
            if weights is not None:
                self.conn.execute("UPDATE samples SET weight = 1.0 WHERE weight != 1.0")
                self.conn.executemany(
                    "UPDATE samples SET weight = ? WHERE id = ?",
                    [(w, sid) for sid, w in weights.items()],
                )
            if record is not None:
                self.conn.execute(
                    "INSERT INTO rounds (round, started_at, finished_at, summary)"
                    " VALUES (?, ?, ?, ?)",
                    (record.round, record.started_at, now, json.dumps(record.summary)),
                )

    def _event(self, now: str, round_no: int, sample_id: str, from_pool: str | None,
               to_pool: str, label: str | None, confidence: float | None, reason: str,
               actor: str) -> None:
        self.conn.execute(
            "INSERT INTO events (time, round, sample_id, from_pool, to_pool, label, confidence,"
            " reason, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, round_no, sample_id, from_pool, to_pool, label, confidence, reason, actor),
        )

    def events(self, sample_id: str | None = None) -> list[tuple]:
        sql = ("SELECT seq, time, round, sample_id, from_pool, to_pool, label, confidence,"
               " reason, actor FROM events")
        if sample_id is not None:
            return self.conn.execute(sql + " WHERE sample_id = ? ORDER BY seq",
                                     (sample_id,)).fetchall()
        return self.conn.execute(sql + " ORDER BY seq").fetchall()


class _Transaction:
    """`BEGIN IMMEDIATE` … `COMMIT`, or `ROLLBACK` on any exception (nesting is flattened)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
