"""The pool store's SQLite schema: its tables, its version, and the tables added since.

`ensure_schema` runs on every open: it creates the tables of a new store, refuses a store of
another schema version, and gives an older store the tables added without a version bump.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sslall.errors import IntegrityError
from sslall.store._records import POOLS

__all__ = ["SCHEMA_VERSION", "conflict_resolution_known", "ensure_schema"]

SCHEMA_VERSION = 1
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    pool TEXT NOT NULL CHECK (pool IN ({", ".join(repr(p) for p in POOLS)})),
    label TEXT,
    label_source TEXT,
    confidence REAL,
    prediction TEXT,
    weight REAL NOT NULL DEFAULT 1.0,
    patient TEXT,
    round INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    added_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_pool_label ON samples (pool, label);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    round INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    from_pool TEXT,
    to_pool TEXT NOT NULL,
    label TEXT,
    confidence REAL,
    reason TEXT,
    actor TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_sample ON events (sample_id, seq);
CREATE TABLE IF NOT EXISTS aliases (
    path TEXT PRIMARY KEY,
    sample_id TEXT NOT NULL,
    label TEXT,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS conflicts (
    path TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    label TEXT,
    existing_label TEXT,
    time TEXT NOT NULL,
    PRIMARY KEY (path, sample_id, label)
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    summary TEXT NOT NULL
);
"""

# Tables added after schema version 1 without a version bump: every open runs their
# `CREATE TABLE IF NOT EXISTS`, so an older store gains them. `labelstudio_tasks`: one row per
# sample sent to Label Studio, keyed on our sample id (Label Studio neither deduplicates nor keeps
# task ids unique). `promotions`: the append-only log of `sslall promote` (round NULL = cleared);
# its last row is the promotion in force (`sslall.store._promotion`).
_ADDED = ("labelstudio_tasks", "promotions")
_ADDED_TABLES = """
CREATE TABLE IF NOT EXISTS labelstudio_tasks (
    sample_id TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    task_id INTEGER,
    visit INTEGER NOT NULL DEFAULT 1,
    round INTEGER,
    pushed_at TEXT NOT NULL,
    resolved_at TEXT,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS promotions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER,
    actor TEXT NOT NULL,
    time TEXT NOT NULL
);
"""
# Columns added the same way: when a conflict was resolved, and how (`sslall sample set-label`).
_ADDED_COLUMNS = """
ALTER TABLE conflicts ADD COLUMN resolved_at TEXT;
ALTER TABLE conflicts ADD COLUMN resolution TEXT;
"""


def ensure_schema(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    """Create the tables (with `create`), check the schema version, add the newer tables.

    Raises:
        IntegrityError: the store has no sslall tables or schema version, or another version
            than this sslall reads.
    """
    if create:
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
    try:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # an empty file, or another program's database
        raise IntegrityError(f"the store is damaged: {path} has no sslall tables; restore it "
                             "from a backup") from None
    if version is None or int(version[0]) != SCHEMA_VERSION:
        raise IntegrityError(
            f"pool store {path} has schema version {version and version[0]}, "
            f"this sslall reads version {SCHEMA_VERSION}"
        )
    _add_tables(conn)


def _add_tables(conn: sqlite3.Connection) -> None:
    """Create the tables and columns added since version 1 (a no-op, and no write, once they
    exist)."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    added = [] if have.issuperset(_ADDED) else [_ADDED_TABLES]
    if not conflict_resolution_known(conn):
        added.append(_ADDED_COLUMNS)
    for script in added:
        try:
            conn.executescript(script)
        except sqlite3.OperationalError:  # a read-only store still answers reads
            pass


def conflict_resolution_known(conn: sqlite3.Connection) -> bool:
    """Whether the conflicts table has its resolution columns (a read-only store opened before
    they were added lacks them: its conflicts are all open)."""
    return "resolved_at" in {r[1] for r in conn.execute("PRAGMA table_info(conflicts)")}
