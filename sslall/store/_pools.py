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
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sslall.errors import IntegrityError, SslallError, UsageError
from sslall.store._records import (
    HUMAN_SOURCES,
    LABELED_POOLS,
    MACHINE,
    POOLS,
    REMOVED,
    Move,
    NewSample,
    PathChange,
    RoundRecord,
    Sample,
    utc_now,
)
from sslall.store._schema import ensure_schema

__all__ = ["PoolStore"]

_SAMPLE_COLUMNS = ", ".join(Sample.__dataclass_fields__)


class PoolStore:
    """The SQLite pool store of one workspace."""

    def __init__(self, path: Path, *, create: bool = False, read_only: bool = False) -> None:
        """Open (or with `create`, make) the store; `read_only` opens it without ever writing,
        so read commands answer on a read-only workspace.

        Raises:
            UsageError: there is no store at `path`.
            IntegrityError: the file is not an SQLite database, or a damaged one.
            SslallError: SQLite cannot open it (a full disk cannot hold the WAL index).
        """
        if not create and not Path(path).is_file():
            raise UsageError(f"no pool store at {path}; is this a workspace made by `sslall init`?")
        self.path = Path(path)
        self.read_only = read_only and not create
        self.conn = self._open(create)

    def _open(self, create: bool) -> sqlite3.Connection:
        conn = None
        try:
            if self.read_only:
                conn = _connect_read_only(self.path)
            else:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            ensure_schema(conn, self.path, create=create)
            return conn
        except sqlite3.OperationalError as exc:  # e.g. a full disk cannot hold the WAL index
            reason: SslallError = SslallError(
                f"cannot open the pool store {self.path}: {exc}{_full_disk(self.path)}")
        except sqlite3.DatabaseError as exc:  # not a database, truncated, malformed
            reason = IntegrityError(f"the store is damaged: {self.path} is not a sound SQLite "
                                    f"database ({exc}); restore it from a backup")
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if conn is not None:
            conn.close()
        raise reason

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

    def quarantined_paths(self) -> dict[str, str]:
        """{path: sample id} of the quarantined samples (an import looks its files up here)."""
        return dict(self.conn.execute("SELECT path, id FROM samples WHERE pool = 'quarantine'"))

    def replace_quarantined(self, old_id: str, new: NewSample, *, round_no: int = 0,
                            actor: str = "import") -> None:
        """Re-adding a quarantined file: its row takes the file's new id, pool, label and
        reason, so one file stays one sample. Its events move to the new id and one event
        (quarantine -> new pool) records the release, so the log still replays.

        Raises:
            IntegrityError: `old_id` is not in quarantine, or `new.id` is already stored.
        """
        now = utc_now()
        with self.transaction():
            row = self.conn.execute("SELECT pool FROM samples WHERE id = ?", (old_id,)).fetchone()
            if row is None or row[0] != "quarantine":
                raise IntegrityError(f"sample {old_id[:12]} is not in quarantine")
            if new.id != old_id and self.get(new.id) is not None:
                raise IntegrityError(f"sample {new.id[:12]} is already stored")
            for table in ("events", "aliases", "conflicts", "labelstudio_tasks"):
                self.conn.execute(f"UPDATE {table} SET sample_id = ? WHERE sample_id = ?",
                                  (new.id, old_id))
            source = actor if new.label is not None else None
            self.conn.execute(
                "UPDATE samples SET id = ?, path = ?, pool = ?, label = ?, label_source = ?,"
                " confidence = NULL, prediction = NULL, weight = 1.0, patient = ?, round = ?,"
                " reason = ?, updated_at = ? WHERE id = ?",
                (new.id, new.path, new.pool, new.label, source, new.patient, round_no, new.reason,
                 now, old_id),
            )
            reason = f"re-added: {new.reason}" if new.reason else "re-added, readable again"
            self._event(now, round_no, new.id, "quarantine", new.pool, new.label, None, reason,
                        actor)

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
        the machine: a labeled sample may only leave `labeled` for `quarantine`. A move to
        `REMOVED` deletes the row; its event (label as it was) stays in the log.
        """
        now = utc_now()
        with self.transaction():
            for m in moves:
                if m.to_pool not in (*POOLS, REMOVED):
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
                if m.to_pool == REMOVED:
                    self.conn.execute("DELETE FROM samples WHERE id = ?", (m.sample_id,))
                    self._event(now, round_no, m.sample_id, pool, REMOVED, label, None, m.reason,
                                actor)
                    continue
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

    def set_paths(self, changes: Sequence[PathChange], *, round_no: int, actor: str) -> None:
        """Record that samples' files are now at other paths, in one transaction: each row's
        path and its import alias change, and an event (pool to the same pool, label kept)
        names both paths, so the log says where every file was.

        Raises:
            IntegrityError: a sample is unknown, or its path is no longer `old_path`.
        """
        now = utc_now()
        with self.transaction():
            for c in changes:
                row = self.conn.execute("SELECT path, pool, label, confidence FROM samples"
                                        " WHERE id = ?", (c.sample_id,)).fetchone()
                if row is None or row[0] != c.old_path:
                    raise IntegrityError(f"sample {c.sample_id[:12]} is not at {c.old_path}")
                self.conn.execute("UPDATE samples SET path = ?, updated_at = ? WHERE id = ?",
                                  (c.new_path, now, c.sample_id))
                self.conn.execute("UPDATE OR IGNORE aliases SET path = ? WHERE path = ? AND"
                                  " sample_id = ?", (c.new_path, c.old_path, c.sample_id))
                self.conn.execute("DELETE FROM aliases WHERE path = ? AND sample_id = ?",
                                  (c.old_path, c.sample_id))
                self._event(now, round_no, c.sample_id, row[1], row[1], row[2], row[3],
                            f"relocated from {c.old_path} to {c.new_path}", actor)

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


def _full_disk(path: Path) -> str:
    """" (the disk is full)" when the store's filesystem has no free block: SQLite names a full
    disk "disk I/O error" when it cannot make its WAL index."""
    try:
        return " (the disk is full)" if os.statvfs(path.parent).f_bavail == 0 else ""
    except OSError:
        return ""


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes. A WAL database opened read-only needs its -shm file, which
    a read-only folder cannot hold; then the file is opened as immutable (nothing else can be
    writing to a read-only folder)."""
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    except sqlite3.DatabaseError:
        conn.close()
        raise
    if os.access(path.parent, os.W_OK):
        raise sqlite3.OperationalError(f"unable to open {path} read-only")
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)


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
