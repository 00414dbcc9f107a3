"""The pool store's invariants, checked by `sslall check`.

1. every sample is in exactly one known pool, and labelled pools carry a known class;
2. replaying the event log gives the current pool and label of every sample, and no event
   names a sample the store does not have, unless its last event removed it (a removed sample
   that is added again starts a new chain from nothing);
3. every file (outside quarantine) still exists and still has the sha256 that is its id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sslall._fsutil import sha256_file
from sslall._progress import Progress
from sslall.store._pools import PoolStore
from sslall.store._records import LABELED_POOLS, POOLS, REMOVED


@dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    kind: str
    sample_id: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.sample_id[:12]} {self.detail}"


def check_rows(store: PoolStore, classes: Sequence[str]) -> Iterator[Violation]:
    """Invariant 1: pools and labels are well formed."""
    known = set(classes)
    for sid, pool, label in store.conn.execute("SELECT id, pool, label FROM samples"):
        if pool not in POOLS:
            yield Violation("unknown-pool", sid, f"is in {pool!r}")
        elif pool in LABELED_POOLS and label not in known:
            yield Violation("bad-label", sid, f"in {pool} has label {label!r}, not a class")
        elif pool in ("unlabeled", "review") and label is not None:
            yield Violation("stray-label", sid, f"in {pool} carries label {label!r}")


def check_replay(store: PoolStore) -> Iterator[Violation]:
    """Invariant 2: the last event of each sample says where it is now."""
    state: dict[str, tuple[str, str | None]] = {}
    previous: dict[str, str | None] = {}
    cur = store.conn.execute(
        "SELECT sample_id, from_pool, to_pool, label FROM events ORDER BY seq"
    )
    while rows := cur.fetchmany(20000):
        for sid, from_pool, to_pool, label in rows:
            before = previous.get(sid)
            if before != from_pool and not (before == REMOVED and from_pool is None):
                yield Violation(
                    "broken-chain", sid,
                    f"event moves it from {from_pool} but the log had it in {previous.get(sid)}",
                )
            previous[sid] = to_pool
            state[sid] = (to_pool, label)
    for sid, pool, label in store.conn.execute("SELECT id, pool, label FROM samples"):
        replayed = state.pop(sid, None)
        if replayed is None:
            yield Violation("no-events", sid, "has no event in the log")
        elif replayed != (pool, label):
            yield Violation(
                "replay-mismatch", sid,
                f"is in {pool} ({label}) but the event log says {replayed[0]} ({replayed[1]})",
            )
    for sid, (pool, _) in state.items():
        if pool != REMOVED:
            yield Violation("orphan-event", sid, "has events but no sample row")


def check_files(store: PoolStore, progress: Progress | None = None) -> Iterator[Violation]:
    """Invariant 3: each file outside quarantine exists with the same bytes;
    `progress("check files", done, total)` after each file."""
    pools = [p for p in POOLS if p != "quarantine"]
    sizes = store.pool_sizes()
    total = sum(sizes[p] for p in pools)
    for done, sample in enumerate(store.samples(pools), 1):
        try:
            digest = sha256_file(sample.path)
        except FileNotFoundError:
            yield Violation("missing-file", sample.id, f"{sample.path} no longer exists")
        except OSError as exc:
            yield Violation("unreadable-file", sample.id, f"{sample.path}: {exc.strerror}")
        else:
            if digest != sample.id:
                yield Violation("changed-file", sample.id, f"{sample.path} changed since import")
        if progress:
            progress("check files", done, total)


def check_store(
    store: PoolStore, classes: Sequence[str], *, files: bool = True,
    progress: Progress | None = None,
) -> list[Violation]:
    """All invariants; an empty list means the store is sound."""
    found = [*check_rows(store, classes), *check_replay(store)]
    if files:
        found += check_files(store, progress)
    return found
