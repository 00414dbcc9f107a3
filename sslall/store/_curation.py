"""Fixing labels and removing samples by hand: `sslall sample`, `sslall quarantine`,
`sslall conflicts`.

Every change is a move of the pool store (`PoolStore.apply_moves`), so it is an event with its
reason and actor (`hand:<who>`) and `sslall check` still replays the log to the pools:

- a label set or corrected by hand has `label_source` "hand" (a human label the machine never
  overwrites); setting one resolves the sample's open label conflicts (recorded by `add`);
- a removed sample's row is deleted and its last event is a move to "removed" (the label it had,
  the reason, and its path): its history stays in the log. Adding the same file again later
  brings it back as a new sample whose log continues;
- a quarantined sample is released to the pool it was quarantined from (pseudo -> unlabeled)
  only when its file has the sha256 that is its id again and decodes.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

from sslall._fsutil import sha256_file
from sslall.data._images import UnreadableImage, inspect_image
from sslall.errors import InputError, NotFoundError, UsageError
from sslall.store._pools import PoolStore
from sslall.store._records import HAND, LABELED_POOLS, REMOVED, Move, Sample, utc_now
from sslall.store._relocate import quarantined_from
from sslall.store._schema import conflict_resolution_known

__all__ = ["Conflict", "LabelChange", "QuarantinedSample", "Released", "Removed",
           "conflict_settled", "conflicts", "find_sample", "quarantined", "release", "remove",
           "sample_history", "set_label"]

MIN_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")


def find_sample(store: PoolStore, ref: str) -> Sample:
    """The sample `ref` names: its id, a unique prefix of at least 8 hex characters, or a path
    (the sample's own, or another path its bytes were imported from).

    Raises:
        UsageError: a prefix that several samples share.
        NotFoundError: no sample has that id, prefix or path.
    """
    key = ref.strip().lower()
    if len(key) >= MIN_PREFIX and _HEX.fullmatch(key):
        rows = store.conn.execute("SELECT id FROM samples WHERE id >= ? AND id < ? LIMIT 2",
                                  (key, key + "g")).fetchall()
        if len(rows) > 1:
            raise UsageError(f"{ref!r} is the start of several sample ids; give more of it")
        if rows:
            return _get(store, rows[0][0])
    path = os.path.abspath(ref)
    row = store.conn.execute("SELECT id FROM samples WHERE path = ?", (path,)).fetchone()
    found = (row[0],) if row else store.find_path(path)
    sample = store.get(found[0]) if found else None
    if sample is None:
        raise NotFoundError(f"no sample in this workspace has the id or path {ref!r} (an id "
                            f"needs at least {MIN_PREFIX} hex characters)")
    return sample


def _get(store: PoolStore, sample_id: str) -> Sample:
    sample = store.get(sample_id)
    if sample is None:  # a caller's id, not one just read: the store changed underneath
        raise NotFoundError(f"no sample {sample_id[:12]} in this workspace")
    return sample


@dataclass(frozen=True)
class LabelChange:
    """What `set_label` did: `changed` is False when the label was already that and no
    conflict was open (nothing recorded)."""

    sample_id: str
    path: str
    from_pool: str
    to_pool: str
    old_label: str | None
    label: str
    changed: bool
    conflicts_resolved: int


def set_label(store: PoolStore, ref: str, label: str, classes: tuple[str, ...], *,
              reason: str, by: str) -> LabelChange:
    """Set (unlabeled, pseudo, review -> labeled) or correct (labeled, holdout: same pool) the
    human label of the sample `ref` names, recording `reason` and the actor `hand:<by>`; its
    open label conflicts are resolved by this label. Setting the label it already has still
    resolves open conflicts (the label is confirmed).

    Raises:
        InputError: `label` is not a class.
        UsageError: the sample is quarantined, or `reason` is empty.
        NotFoundError: see `find_sample`.
    """
    if label not in classes:
        raise InputError(f"label {label!r} is not a class (allowed: {', '.join(classes)})")
    reason = _reason(reason)
    sample = find_sample(store, ref)
    if sample.pool == "quarantine":
        raise UsageError(f"sample {sample.id[:12]} is quarantined ({sample.reason}); release "
                         "it first (`sslall quarantine release`)")
    to_pool = sample.pool if sample.pool in ("labeled", "holdout") else "labeled"
    open_conflicts = _open_conflicts(store, sample.id)
    human = sample.pool == to_pool
    if human and sample.label == label and not open_conflicts:
        return LabelChange(sample.id, sample.path, sample.pool, to_pool, sample.label, label,
                           False, 0)
    if not human:
        what = f"labelled {label!r} by hand (was {sample.pool})"
    elif sample.label == label:
        what = f"label {label!r} confirmed by hand"
    else:
        what = f"label corrected from {sample.label!r} to {label!r} by hand"
    move = Move(sample.id, to_pool, from_pool=sample.pool, label=label, label_source=HAND,
                confidence=sample.confidence, prediction=sample.prediction,
                reason=f"{what}: {reason}")
    with store.transaction() as conn:
        store.apply_moves([move], round_no=store.last_round(), actor=f"{HAND}:{by}")
        # The paths it was imported from with another label are settled too: re-adding them
        # reports no conflict (see `conflict_settled`).
        conn.execute("INSERT OR IGNORE INTO conflicts (path, sample_id, label, existing_label,"
                     " time) SELECT path, sample_id, label, ?, ? FROM aliases WHERE sample_id = ?"
                     " AND label IS NOT NULL AND label != ?",
                     (sample.label, utc_now(), sample.id, label))
        _resolve_conflicts(store, sample.id, f"{what} ({by}): {reason}")
    return LabelChange(sample.id, sample.path, sample.pool, to_pool, sample.label, label, True,
                       open_conflicts)


def _reason(reason: str) -> str:
    text = " ".join(reason.split())
    if not text:
        raise UsageError("--reason is empty: say why (it is recorded in the event log)")
    return text


def _open_conflicts(store: PoolStore, sample_id: str) -> int:
    resolved = " AND resolved_at IS NULL" if conflict_resolution_known(store.conn) else ""
    row = store.conn.execute(f"SELECT COUNT(*) FROM conflicts WHERE sample_id = ?{resolved}",
                             (sample_id,)).fetchone()
    return int(row[0])


def _resolve_conflicts(store: PoolStore, sample_id: str, resolution: str) -> None:
    store.conn.execute("UPDATE conflicts SET resolved_at = ?, resolution = ? WHERE sample_id = ?"
                       " AND resolved_at IS NULL", (utc_now(), resolution, sample_id))


def conflict_settled(store: PoolStore, path: str, sample_id: str, label: str | None) -> bool:
    """Whether `label` at `path` for the sample is a conflict already resolved by hand (`add`
    then leaves it unreported)."""
    if not conflict_resolution_known(store.conn):
        return False
    return store.conn.execute(
        "SELECT 1 FROM conflicts WHERE path = ? AND sample_id = ? AND label IS ? AND "
        "resolved_at IS NOT NULL", (path, sample_id, label)).fetchone() is not None


@dataclass(frozen=True)
class Removed:
    """One sample removed from the workspace (kept in the event log)."""

    sample_id: str
    path: str
    pool: str
    label: str | None


def remove(store: PoolStore, samples: list[Sample], *, reason: str, by: str) -> list[Removed]:
    """Remove `samples` from the workspace in one transaction: each row goes, its last event
    is a move to "removed" naming the reason and its path, its open conflicts are resolved as
    removed, its open Label Studio task is closed, and its import paths are forgotten (adding
    the file again brings it back as new).

    Raises:
        UsageError: `reason` is empty.
        IntegrityError: a sample changed pool since it was read (see `apply_moves`).
    """
    reason = _reason(reason)
    unique = list({s.id: s for s in samples}.values())
    moves = [Move(s.id, REMOVED, from_pool=s.pool,
                  reason=f"removed by hand from {s.pool}: {reason} (path {s.path})")
             for s in unique]
    now = utc_now()
    with store.transaction() as conn:
        store.apply_moves(moves, round_no=store.last_round(), actor=f"{HAND}:{by}")
        for s in unique:
            if _open_conflicts(store, s.id):
                _resolve_conflicts(store, s.id, f"sample removed ({by}): {reason}")
            conn.execute("DELETE FROM aliases WHERE sample_id = ?", (s.id,))
            conn.execute("UPDATE labelstudio_tasks SET resolved_at = ?, outcome = ? WHERE "
                         "sample_id = ? AND resolved_at IS NULL",
                         (now, "removed from the workspace", s.id))
    return [Removed(s.id, s.path, s.pool, s.label) for s in unique]


@dataclass(frozen=True)
class QuarantinedSample:
    """A quarantined sample with why, since when, and the pool it came from (None: it was
    quarantined at import)."""

    sample_id: str
    path: str
    reason: str | None
    since: str
    from_pool: str | None
    label: str | None


def quarantined(store: PoolStore) -> list[QuarantinedSample]:
    """Every quarantined sample, by path."""
    return sorted((QuarantinedSample(s.id, s.path, s.reason, s.updated_at,
                                     quarantined_from(store, s.id), s.label)
                   for s in store.samples("quarantine")), key=lambda q: q.path)


@dataclass
class Released:
    """What `release` did: released (sample id, path, pool) and refused (sample id, path,
    why) samples."""

    released: list[tuple[str, str, str]] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"released": [{"sample_id": i, "path": p, "pool": q} for i, p, q in self.released],
                "refused": [{"sample_id": i, "path": p, "reason": w} for i, p, w in self.refused]}


def release(store: PoolStore, samples: list[Sample], *, max_pixels: int, by: str,
            reason: str = "") -> Released:
    """Release quarantined `samples` whose file is readable again: its sha256 is the sample's
    id and it decodes. Each goes back to the pool it was quarantined from (a pseudo label goes
    back to unlabeled; the next round gives it again), label kept; the others are refused with
    why. All releases are one transaction.

    Raises:
        IntegrityError: a sample left quarantine since it was read (see `apply_moves`).
    """
    report, moves = Released(), []
    note = f": {' '.join(reason.split())}" if reason.strip() else ""
    for s in {s.id: s for s in samples}.values():
        pool, why = _release_target(store, s, max_pixels)
        if pool is None:
            report.refused.append((s.id, s.path, why))
            continue
        keep = pool in LABELED_POOLS
        moves.append(Move(s.id, pool, from_pool="quarantine", label=s.label if keep else None,
                          label_source=s.label_source if keep else None,
                          reason=f"released by hand, the file is readable again{note}"))
        report.released.append((s.id, s.path, pool))
    if moves:
        store.apply_moves(moves, round_no=store.last_round(), actor=f"{HAND}:{by}")
    return report


def _release_target(store: PoolStore, sample: Sample, max_pixels: int) -> tuple[str | None, str]:
    """(the pool to release `sample` to, "") or (None, why it stays)."""
    if sample.pool != "quarantine":
        return None, f"is in {sample.pool}, not quarantine"
    from_pool = quarantined_from(store, sample.id)
    if from_pool is None:
        return None, ("quarantined at import (its bytes never passed); fix the file and "
                      "`sslall add` it again")
    try:
        if sha256_file(sample.path) != sample.id:
            return None, ("its bytes differ from those imported (sha256); `sslall add` the file "
                          "again as a new sample")
        inspect_image(sample.path, max_pixels=max_pixels)
    except FileNotFoundError:
        return None, f"{sample.path} is missing (if its folder moved: `sslall relocate`)"
    except OSError as exc:
        return None, f"{sample.path} is unreadable: {exc.strerror or exc}"
    except UnreadableImage as exc:
        return None, f"{sample.path} does not decode: {exc}"
    return ("unlabeled" if from_pool == "pseudo" else from_pool), ""


@dataclass(frozen=True)
class Conflict:
    """Two labels given to the same bytes: `label` at `path`, `existing_label` kept."""

    path: str
    sample_id: str
    label: str | None
    existing_label: str | None
    time: str
    resolved_at: str | None = None
    resolution: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def conflicts(store: PoolStore, *, include_resolved: bool = False) -> list[Conflict]:
    """The label conflicts `add` recorded, oldest first; the open ones unless
    `include_resolved`."""
    if not conflict_resolution_known(store.conn):
        rows = store.conn.execute("SELECT path, sample_id, label, existing_label, time FROM "
                                  "conflicts ORDER BY time, path").fetchall()
        return [Conflict(*r) for r in rows]
    where = "" if include_resolved else " WHERE resolved_at IS NULL"
    rows = store.conn.execute("SELECT path, sample_id, label, existing_label, time, resolved_at,"
                              f" resolution FROM conflicts{where} ORDER BY time, path").fetchall()
    return [Conflict(*r) for r in rows]


def sample_history(store: PoolStore, ref: str) -> tuple[Sample | None, list[tuple]]:
    """(the sample `ref` names, or None when it was removed; its events, oldest first). A
    removed sample is found by its id or a unique prefix of it, from the log.

    Raises:
        UsageError, NotFoundError: see `find_sample`.
    """
    try:
        sample = find_sample(store, ref)
    except NotFoundError:
        key = ref.strip().lower()
        if not (len(key) >= MIN_PREFIX and _HEX.fullmatch(key)):
            raise
        ids = [r[0] for r in store.conn.execute(
            "SELECT DISTINCT sample_id FROM events WHERE sample_id >= ? AND sample_id < ? "
            "LIMIT 2", (key, key + "g"))]
        if len(ids) != 1:
            raise
        return None, store.events(ids[0])
    return sample, store.events(sample.id)
