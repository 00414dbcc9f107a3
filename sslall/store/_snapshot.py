"""The rows a round works on, read once at its start, and masks over them.

It lives beside the store (below every layer that reads it: the learner, the decisions, the
run files) so that none of them has to import the round that creates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sslall._fsutil import NotRegularFile, sha256_file
from sslall._progress import Progress
from sslall.store._pools import PoolStore
from sslall.store._records import SCORED_POOLS, Move, Sample


@dataclass
class Snapshot:
    """The rows a round works on, read once at its start; `guesses` holds the previous round's
    (predicted class, calibrated confidence) of each unlabeled row, when the round trains on
    them (`train.unlabeled_weight`)."""

    classes: tuple[str, ...]
    rows: list[Sample]
    quarantine: list[Move] = field(default_factory=list)
    guesses: dict[str, tuple[str, float | None]] = field(default_factory=dict)

    def mask(self, *pools: str) -> np.ndarray:
        return np.array([s.pool in pools for s in self.rows], dtype=bool)

    def human_mask(self) -> np.ndarray:
        return np.array([s.pool == "labeled" for s in self.rows], dtype=bool)

    def label_index(self) -> np.ndarray:
        """Class index of each row, -1 where it has no label."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup.get(s.label, -1) for s in self.rows], dtype=np.int64)


def take_snapshot(store: PoolStore, classes: tuple[str, ...]) -> Snapshot:
    """Every row a round scores (labeled, unlabeled, pseudo, review, holdout), in store order."""
    return Snapshot(classes, list(store.samples(SCORED_POOLS)))


def verify_files(snapshot: Snapshot, progress: Progress | None = None) -> Snapshot:
    """Re-hash every file; a missing or changed one is quarantined, never trained on.

    The quarantine moves already in `snapshot` are kept. A fifo, socket or device where the
    image was is refused without blocking (`changed-file`).
    """
    kept, moves = [], list(snapshot.quarantine)
    for i, s in enumerate(snapshot.rows):
        try:
            ok = sha256_file(s.path) == s.id
            reason = "changed-file: the file's bytes changed since import"
        except NotRegularFile as exc:
            ok, reason = False, f"changed-file: the file {exc.strerror}"
        except OSError as exc:
            ok, reason = False, f"missing-file: {exc.strerror}"
        if ok:
            kept.append(s)
        else:
            moves.append(Move(s.id, "quarantine", from_pool=s.pool, reason=reason))
        if progress and (i % 256 == 0 or i == len(snapshot.rows) - 1):
            progress("verify", i + 1, len(snapshot.rows))
    return Snapshot(snapshot.classes, kept, moves, snapshot.guesses)
