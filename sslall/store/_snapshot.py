"""The rows a round works on, read once at its start, and masks over them.

It lives beside the store (below every layer that reads it: the learner, the decisions, the
run files) so that none of them has to import the round that creates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sslall.store._pools import PoolStore
from sslall.store._records import SCORED_POOLS, Move, Sample


@dataclass
class Snapshot:
    """The rows a round works on, read once at its start."""

    classes: tuple[str, ...]
    rows: list[Sample]
    quarantine: list[Move] = field(default_factory=list)

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
