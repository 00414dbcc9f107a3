"""What sslall sent to Label Studio, kept in the pool store (table `labelstudio_tasks`).

One row per sample, keyed on our sample id, never on Label Studio's task id (the server does not
deduplicate, and reuses task ids after a deletion). A sample's `visit` counts the tasks made for
it in one project: a sample skipped back to unlabeled and routed to review again gets a new task
(visit 2, carried in the task data), so an old answer is never applied twice. `resolved_at` is
set when a pull applied (or set aside) the task's answer; an open row is a task still waiting.
The meta key `labelstudio_push_pending` marks a push that has not finished (see
`sslall.labelstudio._push`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sslall.store._pools import PoolStore
from sslall.store._records import Sample, utc_now

PENDING_KEY = "labelstudio_push_pending"
def get(store: PoolStore, sample_id: str) -> tuple[int, int, int | None, str | None] | None:
    """(project, visit, task id, resolved_at) recorded for a sample, if any."""
    return store.conn.execute(
        "SELECT project_id, visit, task_id, resolved_at FROM labelstudio_tasks WHERE sample_id = ?",
        (sample_id,)).fetchone()


def remember(store: PoolStore, rows: Sequence[tuple[str, int, int | None, int, int]]) -> None:
    """Record (sample, project, task id, visit, round) as pushed and open; one transaction."""
    now = utc_now()
    with store.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO labelstudio_tasks (sample_id, project_id, task_id, visit,"
            " round, pushed_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(*r, now) for r in rows])


def open_visit(store: PoolStore, s: Sample, pid: int) -> int | None:
    """The visit of the sample's open task in this project, or None when it needs a task."""
    rec = get(store, s.id)
    return rec[1] if rec and rec[0] == pid and rec[3] is None else None


def next_visit(store: PoolStore, s: Sample, pid: int) -> int:
    """The visit number a new task for the sample in this project gets."""
    rec = get(store, s.id)
    return rec[1] + 1 if rec and rec[0] == pid else 1


def task_key(data: dict) -> tuple[str, int] | None:
    """(sample id, visit) from a task's data; None for a task sslall did not make."""
    sid = data.get("sample_id")
    visit = data.get("visit", 1)
    return (sid, int(visit)) if isinstance(sid, str) and isinstance(visit, int) else None


def push_pending(store: PoolStore) -> str | None:
    """The project id of a push that has not finished, if any."""
    row = store.conn.execute("SELECT value FROM meta WHERE key = ?", (PENDING_KEY,)).fetchone()
    return row[0] if row else None


def set_push_pending(store: PoolStore, pid: int | None) -> None:
    """Mark a push as started in project `pid`, or (None) as finished."""
    with store.transaction() as conn:
        if pid is None:
            conn.execute("DELETE FROM meta WHERE key = ?", (PENDING_KEY,))
        else:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (PENDING_KEY, str(pid)))


def open_tasks(store: PoolStore, pid: int) -> list[tuple[str, int, int]]:
    """(sample id, task id, round that sent it) of the project's tasks still waiting."""
    return store.conn.execute(
        "SELECT sample_id, task_id, round FROM labelstudio_tasks WHERE project_id = ? AND "
        "resolved_at IS NULL AND task_id IS NOT NULL ORDER BY sample_id", (pid,)).fetchall()


def meta_value(store: PoolStore, key: str) -> str | None:
    row = store.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(store: PoolStore, key: str, value: str) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
