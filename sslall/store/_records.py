"""What the pool store holds and takes: the pool names, a sample's row (`Sample`), a new sample
(`NewSample`), a move between pools (`Move`), a finished round's record (`RoundRecord`), and the
timestamp format. Plain data, no SQLite: modules that pass samples and moves around import this,
not the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

__all__ = ["HAND", "HUMAN_SOURCES", "LABELED_POOLS", "MACHINE", "POOLS", "REMOVED", "SCORED_POOLS",
           "Move", "NewSample", "PathChange", "RoundRecord", "Sample", "utc_now"]

POOLS = ("labeled", "unlabeled", "pseudo", "review", "holdout", "quarantine")
LABELED_POOLS = ("labeled", "pseudo", "holdout")
SCORED_POOLS = ("labeled", "pseudo", "unlabeled", "review", "holdout")
HAND = "hand"  # a label set or corrected by hand (`sslall sample set-label`)
HUMAN_SOURCES = ("import", "review", "labelstudio", "oracle", HAND)
MACHINE = "machine"
# Not a pool: a move here deletes the sample's row; its events, the last one a move to
# "removed", stay in the log (`sslall sample remove`).
REMOVED = "removed"


def utc_now() -> str:
    """Now, in UTC, as the ISO 8601 text (milliseconds) every timestamp of the store uses."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Sample:
    """One row of the store."""

    id: str
    path: str
    pool: str
    label: str | None
    label_source: str | None
    confidence: float | None
    prediction: str | None
    weight: float
    patient: str | None
    round: int
    reason: str | None
    added_at: str
    updated_at: str


@dataclass(frozen=True)
class NewSample:
    """A sample about to enter the store (from an import)."""

    id: str
    path: str
    pool: str
    label: str | None = None
    patient: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Move:
    """A change of pool and/or label for one sample; `from_pool` guards against stale moves."""

    sample_id: str
    to_pool: str
    from_pool: str | None = None
    label: str | None = None
    label_source: str | None = None
    confidence: float | None = None
    prediction: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class PathChange:
    """A sample's file found at another path (its folder moved); `old_path` guards against
    stale changes."""

    sample_id: str
    old_path: str
    new_path: str


@dataclass(frozen=True)
class RoundRecord:
    """What a finished round stores about itself (the summary is JSON)."""

    round: int
    started_at: str
    summary: dict = field(default_factory=dict)
