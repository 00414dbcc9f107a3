"""Labelling the review queue by hand: export it to CSV, fill the `label` column, import it.

Import rules: a row whose `label` is one of the classes moves its sample review -> labeled with
`label_source = review`; `skip` sends it back to unlabeled with the reason; an empty label leaves
it in review. A sample that is no longer in review, an unknown id or an unknown class is reported
and changes nothing. Every accepted row commits in one transaction.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from sslall._faults import fault_point
from sslall._fsutil import open_regular
from sslall.errors import InputError, NotFoundError
from sslall.store._csvtext import read_table
from sslall.store._pools import PoolStore
from sslall.store._records import Move, Sample

EXPORT_COLUMNS = ("sample_id", "path", "prediction", "confidence", "label")
SKIP = "skip"


def export_review(store: PoolStore, out: Path) -> int:
    """Write the review queue, least confident first; returns the number of rows."""
    text, n = review_csv(store)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, out)
    return n


def review_csv(store: PoolStore) -> tuple[str, int]:
    """(the review queue as CSV text, least confident first; its number of rows)."""
    rows = sorted(store.samples("review"), key=lambda s: (s.confidence or 0.0, s.id))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(EXPORT_COLUMNS)
    for s in rows:
        conf = "" if s.confidence is None else f"{s.confidence:.4f}"
        writer.writerow([s.id, s.path, s.prediction or "", conf, ""])
    return text.getvalue(), len(rows)


def answer_move(sample: Sample, label: str | None, *, source: str, by: str) -> Move:
    """A human's answer to a review sample: a class moves it review -> labeled (`label_source`
    = `source`), None (a skip) sends it back to unlabeled. The reason names who answered (`by`)
    and whether the answer agrees with the model's guess. The caller checked `label`."""
    if label is None:
        return Move(sample.id, "unlabeled", from_pool="review", reason=f"skipped by {by}")
    return Move(sample.id, "labeled", from_pool="review", label=label, label_source=source,
                reason=f"labelled by {by}; {'agrees' if agrees(sample, label) else 'disagrees'} "
                f"with the model ({sample.prediction})")


def agrees(sample: Sample, label: str) -> bool:
    """Whether a human's label is the model's guess (its pre-annotation)."""
    return label == sample.prediction


@dataclass
class ReviewImport:
    labeled: int = 0
    skipped: int = 0
    pending: int = 0
    rejected: list[str] = field(default_factory=list)


def import_review(store: PoolStore, source: Path, classes: tuple[str, ...], *,
                  actor: str = "review") -> ReviewImport:
    """Apply a filled-in review CSV (see the module docstring)."""
    if not source.is_file():
        raise NotFoundError(f"review file {source} does not exist")
    report = ReviewImport()
    moves: list[Move] = []
    seen: set[str] = set()
    with open_regular(source, "r", newline="", encoding="utf-8-sig") as handle:
        columns, rows = read_table(handle, f"review file {source.name}")
    missing = {"sample_id", "label"} - set(columns)
    if missing:
        raise InputError(f"review file {source.name} lacks column(s) {sorted(missing)} "
                         f"(columns: {', '.join(columns)})")
    for line, row in rows:
        sid = (row.get("sample_id") or "").strip()
        label = (row.get("label") or "").strip()
        if not label:
            report.pending += 1
            continue
        sample = store.get(sid)
        if sample is None:
            report.rejected.append(f"line {line}: unknown sample id {sid[:12]!r}")
        elif sample.pool != "review" or sid in seen:
            report.rejected.append(f"line {line}: sample {sid[:12]} is in {sample.pool}, "
                                   "not review (already answered?)")
        elif label == SKIP:
            moves.append(answer_move(sample, None, source=actor, by="the reviewer"))
            report.skipped += 1
        elif label not in classes:
            report.rejected.append(f"line {line}: label {label!r} is not a class "
                                   f"(allowed: {', '.join(classes)}, or '{SKIP}')")
        else:
            moves.append(answer_move(sample, label, source=actor, by=actor))
            report.labeled += 1
        seen.add(sid)
    fault_point("review-import")  # every answer decided, none committed
    store.apply_moves(moves, round_no=store.last_round(), actor=actor)
    return report
