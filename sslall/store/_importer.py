"""`sslall add`: bring images into a pool, safely and in a stream.

A source (`sslall.store._sources`) is validated first (cheap: names only; a folder is walked
once to count it and again to import, so memory does not grow with its size), then every file
is hashed and fully decoded in worker processes, a bounded window at a time, and committed in
batches: a killed import leaves complete batches, and re-running it picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from hashlib import sha256
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from sslall._faults import fault_point
from sslall._fsutil import NotRegularFile, open_regular, sha256_handle
from sslall._progress import Progress
from sslall._workers import worker_started
from sslall.data._images import UnreadableImage, inspect_image
from sslall.errors import SslallError, UsageError
from sslall.store._curation import conflict_settled
from sslall.store._holdout import HoldoutPlanner
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample
from sslall.store._sources import IMPORT_POOLS, Entry, is_image_name, list_source, walk_folder

log = logging.getLogger(__name__)
WINDOW = 1024
BATCH = 512


@dataclass
class ImportReport:
    """What an import did; every list holds (path, detail) pairs."""

    added: Counter = field(default_factory=Counter)
    already_present: int = 0
    promoted: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)
    relocated: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a manifest's ignored columns

    def as_dict(self) -> dict:
        return {
            "added": dict(self.added), "already_present": self.already_present,
            "promoted": self.promoted,
            "duplicates": [{"path": p, "same_as": o} for p, o in self.duplicates],
            "conflicts": [{"path": p, "detail": d} for p, d in self.conflicts],
            "quarantined": [{"path": p, "reason": r} for p, r in self.quarantined],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "released": [{"path": p, "pool": q} for p, q in self.released],
            "relocated": [{"path": p, "was": o} for p, o in self.relocated],
            "warnings": list(self.warnings),
        }


def examine(path: str, max_pixels: int, within: str | None = None) -> tuple[str, str | None]:
    """Worker: (sample id, quarantine reason or None). Runs in a child process.

    The file is opened once (a fifo is refused without blocking) and hashed and decoded from
    that one open file. With `within` (a manifest's folder, checked when it was validated) the
    opened file must still be the one the path resolves to inside that folder, so a link
    swapped in after validation is refused rather than read.
    """
    try:
        handle = open_regular(path)
    except NotRegularFile:
        return (sha256(f"unreadable:{path}".encode()).hexdigest(),
                "not-a-file: is a fifo, socket or device, not a file")
    except OSError as exc:
        # Unreadable bytes have no content id; name them by their path so they are still tracked.
        return sha256(f"unreadable:{path}".encode()).hexdigest(), f"unreadable: {exc.strerror}"
    with handle:
        if within is not None and not _still_inside(handle, path, within):
            return (sha256(f"unreadable:{path}".encode()).hexdigest(),
                    f"unreadable: now leads outside the manifest's folder {within}")
        try:
            digest = sha256_handle(handle)
        except OSError as exc:
            return sha256(f"unreadable:{path}".encode()).hexdigest(), f"unreadable: {exc.strerror}"
        try:
            inspect_image(path, max_pixels=max_pixels, handle=handle)
        except UnreadableImage as exc:
            return digest, f"{exc.reason}: {exc}"
    return digest, None


def _still_inside(handle: BinaryIO, path: str, within: str) -> bool:
    """The open file is the one `path` resolves to now, and that is inside `within`."""
    real = os.path.realpath(path)
    try:
        now = os.stat(real)
    except OSError:
        return False
    opened = os.fstat(handle.fileno())
    return (Path(real).is_relative_to(within)
            and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino))


def _examined(entries: Iterable[Entry], max_pixels: int, workers: int,
              within: str | None = None) -> Iterator[tuple[Entry, str, str | None]]:
    if workers <= 1:
        for e in entries:
            yield (e, *examine(e.path, max_pixels, within))
        return
    remaining = iter(entries)
    with ProcessPoolExecutor(max_workers=workers, initializer=worker_started,
                             initargs=(os.getpid(),)) as pool:
        while window := list(islice(remaining, WINDOW)):
            results = pool.map(examine, [e.path for e in window], [max_pixels] * len(window),
                               [within] * len(window), chunksize=32)
            for e, (sid, reason) in zip(window, results, strict=True):
                yield e, sid, reason


def import_source(
    store: PoolStore, source: Path, pool: str, classes: Sequence[str], *,
    max_pixels: int, holdout_fraction: float = 0.0, seed: int = 0, workers: int | None = None,
    progress: Progress | None = None, step: str = "import",
) -> ImportReport:
    """Import every file of `source` into `pool`; see the module docstring.

    A folder is walked twice, once to validate and count it and once to import, so memory does
    not grow with the number of files. A manifest, and a labeled import that carves a holdout
    (which must see every label to stratify), are listed in memory first.
    """
    if pool in IMPORT_POOLS and source.is_dir() and not holdout_fraction:
        total = sum(1 for _ in walk_folder(source, pool, classes))
        return import_entries(store, walk_folder(source, pool, classes), pool,
                              max_pixels=max_pixels, workers=workers, progress=progress, step=step,
                              total=total)
    warnings: list[str] = []
    entries = list_source(source, pool, classes, warnings)
    is_manifest = source.is_file() and not is_image_name(source)
    within = str(source.parent.resolve()) if is_manifest else None
    report = import_entries(store, entries, pool, max_pixels=max_pixels,
                            holdout_fraction=holdout_fraction, seed=seed, workers=workers,
                            progress=progress, step=step, within=within)
    for line in warnings:
        log.warning("%s", line)
    report.warnings.extend(warnings)
    return report


def import_entries(
    store: PoolStore, entries: Iterable[Entry], pool: str, *, max_pixels: int,
    holdout_fraction: float = 0.0, seed: int = 0, workers: int | None = None,
    progress: Progress | None = None, step: str = "import", total: int | None = None,
    within: str | None = None,
) -> ImportReport:
    """Import already-validated entries (labels known to be classes) into `pool`.

    `within`: the folder every entry was validated to resolve inside (a manifest's); a file
    that leads elsewhere when it is read is quarantined (see `examine`).

    `entries` may be a one-pass iterator when `total` (its length, for progress) is given and
    no holdout is carved. `progress(step, done, total)` after each file.
    """
    if holdout_fraction and pool != "labeled":
        raise UsageError("--holdout-fraction only applies when adding to the labeled pool")
    if holdout_fraction or total is None:
        entries = entries if isinstance(entries, Sequence) else list(entries)
        total = len(entries)
    planner = HoldoutPlanner(entries, holdout_fraction, seed) if holdout_fraction else None
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    report = ImportReport()
    try:
        _import(store, entries, pool, max_pixels, planner, workers, progress, step, total, report,
                within)
    except sqlite3.OperationalError as exc:  # a full disk, a read-only workspace
        raise SslallError(
            f"the import stopped: the pool store cannot be written ({exc}); the batches "
            "committed so far are kept, run the same `sslall add` again to import the rest"
        ) from None
    return report


def _import(store: PoolStore, entries: Iterable[Entry], pool: str, max_pixels: int,
            planner: HoldoutPlanner | None, workers: int, progress: Progress | None, step: str,
            total: int, report: ImportReport, within: str | None) -> None:
    quarantined = store.quarantined_paths()
    batch: list[NewSample] = []
    batch_ids: dict[str, str] = {}
    done = 0
    for entry, sid, reason in _examined(entries, max_pixels, workers, within):
        if pool == "unlabeled" and entry.label is not None:
            raise UsageError(f"{entry.path}: the unlabeled pool takes no label")
        target = "quarantine" if reason else pool
        if planner is not None and target == pool and planner.is_holdout(entry):
            target = "holdout"
        if sid in batch_ids:
            report.duplicates.append((entry.path, batch_ids[sid]))
            store.record_alias(entry.path, sid, entry.label)
        else:
            new = _reconcile(store, report, entry, sid, target, reason, quarantined)
            if new is not None:
                batch.append(new)
                batch_ids[sid] = entry.path
        if len(batch) >= BATCH:
            _flush(store, batch, batch_ids, report)
            fault_point("import-batch")
        done += 1
        if progress:
            progress(step, done, total)
    _flush(store, batch, batch_ids, report)


def _reconcile(store: PoolStore, report: ImportReport, entry: Entry, sid: str, target: str,
               reason: str | None, quarantined: dict[str, str]) -> NewSample | None:
    """Decide what an examined file becomes: new, no-op, duplicate, conflict, promotion, the
    release of its quarantined row (one file is one sample, whatever its history), or the new
    path of a known sample whose recorded file is gone (its folder moved)."""
    from sslall.store._relocate import relocate_sample

    existing = store.get(sid)
    if existing is None:
        if reason:
            report.quarantined.append((entry.path, reason))
        new = NewSample(sid, entry.path, target, entry.label, entry.patient, reason)
        old = quarantined.pop(entry.path, None)
        if old is None:
            return new
        store.replace_quarantined(old, new, round_no=store.last_round())
        report.released.append((entry.path, target))
        return None
    if existing.path == entry.path:
        report.already_present += 1
    elif not reason and not os.path.exists(existing.path):
        moved = relocate_sample(store, existing, entry.path)
        report.relocated.append((entry.path, existing.path))
        if moved.released_to:
            report.released.append((entry.path, moved.released_to))
        existing = store.get(sid) or existing
    else:
        report.duplicates.append((entry.path, existing.path))
        store.record_alias(entry.path, sid, entry.label)
    if entry.label is None or existing.pool == "quarantine":
        return None
    if existing.pool in ("labeled", "holdout"):
        if existing.label != entry.label and not conflict_settled(store, entry.path, sid,
                                                                  entry.label):
            report.conflicts.append(
                (entry.path, f"labelled {entry.label!r} here but {existing.label!r} in "
                             f"{existing.path}; kept {existing.label!r}, resolve by hand")
            )
            store.record_conflict(entry.path, sid, entry.label, existing.label)
        return None
    store.apply_moves(
        [Move(sid, target, from_pool=existing.pool, label=entry.label, label_source="import",
              reason="labelled at import")], round_no=store.last_round(), actor="import",
    )
    report.promoted += 1
    return None


def _flush(store: PoolStore, batch: list[NewSample], batch_ids: dict[str, str],
           report: ImportReport) -> None:
    if batch:
        store.add_samples(batch, round_no=store.last_round())
        report.added.update(s.pool for s in batch)
    batch.clear()
    batch_ids.clear()
