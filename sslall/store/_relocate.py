"""`sslall relocate`: point the store at the folder its images moved to, verified by hash.

A sample's path is rewritten from OLD_PREFIX/rest to NEW_PREFIX/rest only when the file there
has the sha256 that is the sample's id; the rest are reported and left as they were. A sample
quarantined because its file was missing is released to the pool it was quarantined from (its
label kept; a pseudo-labelled one goes back to unlabeled, its pseudo label is the next round's
to give). Every change is an event of the store (`PoolStore.set_paths`, `apply_moves`), in one
transaction. `add` uses `relocate_sample` for one re-added file whose recorded path is gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sslall._fsutil import NotRegularFile, sha256_file
from sslall._progress import Progress
from sslall.errors import InputError, UsageError
from sslall.store._pools import PoolStore
from sslall.store._records import LABELED_POOLS, Move, PathChange, Sample

__all__ = ["RelocateReport", "Relocated", "quarantined_from", "relocate", "relocate_sample",
           "under_prefix"]

ACTOR = "relocate"
EXAMPLES = 20


@dataclass(frozen=True)
class Relocated:
    """One sample whose path changes; `released_to` is the pool it leaves quarantine for."""

    sample_id: str
    old_path: str
    new_path: str
    pool: str
    released_to: str | None = None


@dataclass
class RelocateReport:
    """What a relocation did (or, with `dry_run`, would do)."""

    old_prefix: str
    new_prefix: str
    dry_run: bool
    matched: int = 0
    moved: list[Relocated] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (old, new, why)

    @property
    def released(self) -> list[Relocated]:
        return [r for r in self.moved if r.released_to]

    def as_dict(self) -> dict:
        return {
            "old_prefix": self.old_prefix, "new_prefix": self.new_prefix,
            "dry_run": self.dry_run, "matched": self.matched, "relocated": len(self.moved),
            "released": [{"sample_id": r.sample_id, "path": r.new_path, "pool": r.released_to}
                         for r in self.released],
            "refused": len(self.refused),
            "refused_examples": [{"path": o, "new_path": n, "reason": w}
                                 for o, n, w in self.refused[:EXAMPLES]],
            "moved_examples": [{"sample_id": r.sample_id, "path": r.old_path,
                                "new_path": r.new_path} for r in self.moved[:EXAMPLES]],
        }


def under_prefix(path: str, prefix: str) -> str | None:
    """The rest of `path` below the folder `prefix` ("" for the prefix itself), or None when
    `path` is not inside it: /data/a holds /data/a/x.png, never /data/ab/x.png."""
    if path == prefix:
        return ""
    base = prefix if prefix.endswith(os.sep) else prefix + os.sep
    return path[len(base):] if path.startswith(base) else None


def _verify(sample_id: str, path: str) -> str | None:
    """Why the file at `path` cannot be the sample, or None when its sha256 is the id."""
    try:
        digest = sha256_file(path)
    except FileNotFoundError:
        return "missing"
    except NotRegularFile as exc:
        return f"unreadable: {exc.strerror}"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    return None if digest == sample_id else "different bytes (sha256 is not the sample's id)"


def release_pool(store: PoolStore, sample: Sample) -> str | None:
    """The pool a quarantined sample returns to when its missing file is found again: the pool
    the log saw it quarantined from (pseudo -> unlabeled); None when it was quarantined for
    another reason or never was in a pool (imported straight into quarantine)."""
    if sample.pool != "quarantine" or not (sample.reason or "").startswith("missing-file"):
        return None
    from_pool = quarantined_from(store, sample.id)
    return "unlabeled" if from_pool == "pseudo" else from_pool


def quarantined_from(store: PoolStore, sample_id: str) -> str | None:
    """The pool the log last saw a quarantined sample enter quarantine from; None when it was
    imported straight into quarantine."""
    for event in reversed(store.events(sample_id)):
        from_pool, to_pool = event[4], event[5]
        if to_pool == "quarantine" and from_pool != "quarantine":
            return from_pool
    return None


def _release(sample: Sample, pool: str, new_path: str) -> Move:
    labelled = pool in LABELED_POOLS
    return Move(sample.id, pool, from_pool="quarantine",
                label=sample.label if labelled else None,
                label_source=sample.label_source if labelled else None,
                reason=f"found again at {new_path}")


def _apply(store: PoolStore, moved: list[Relocated], samples: dict[str, Sample],
           actor: str) -> None:
    round_no = store.last_round()
    with store.transaction():
        store.set_paths([PathChange(r.sample_id, r.old_path, r.new_path) for r in moved],
                        round_no=round_no, actor=actor)
        releases = [_release(samples[r.sample_id], r.released_to, r.new_path)
                    for r in moved if r.released_to]
        if releases:
            store.apply_moves(releases, round_no=round_no, actor=actor)


def relocate(store: PoolStore, old_prefix: str, new_prefix: str, *, strict: bool = False,
             dry_run: bool = False, progress: Progress | None = None) -> RelocateReport:
    """Move every sample under the folder `old_prefix` to the same place under `new_prefix`
    (both made absolute, as the store records paths), each verified by hash first; see the
    module docstring. `progress("verify", done, total)` after each file.

    Raises:
        UsageError: the prefixes are the same folder, or no sample is under `old_prefix`.
        InputError: with `strict`, some file under `new_prefix` is missing or differs
            (nothing is changed then).
    """
    old, new = os.path.abspath(old_prefix), os.path.abspath(new_prefix)
    if old == new:
        raise UsageError(f"OLD_PREFIX and NEW_PREFIX are the same folder ({old})")
    report = RelocateReport(old, new, dry_run)
    matched = [(s, rest) for s in store.samples() if (rest := under_prefix(s.path, old)) is not None]
    if not matched:
        example = next(store.samples(), None)
        hint = f" (paths are recorded absolute, e.g. {example.path})" if example else ""
        raise UsageError(f"no sample's path is under {old}{hint}")
    report.matched = len(matched)
    samples = {}
    for done, (s, rest) in enumerate(matched, 1):
        target = os.path.join(new, rest) if rest else new
        why = _verify(s.id, target)
        if why is None:
            samples[s.id] = s
            report.moved.append(Relocated(s.id, s.path, target, s.pool, release_pool(store, s)))
        else:
            report.refused.append((s.path, target, why))
        if progress:
            progress("verify", done, len(matched))
    if strict and report.refused:
        _, target, why = report.refused[0]
        raise InputError(
            f"{len(report.refused)} of {len(matched)} files under {new} are missing or differ, "
            f"e.g. {target}: {why}; nothing changed (--strict)")
    if not dry_run and report.moved:
        _apply(store, report.moved, samples, ACTOR)
    return report


def relocate_sample(store: PoolStore, sample: Sample, new_path: str, *,
                    actor: str = "import") -> Relocated:
    """Point one sample at `new_path`, whose bytes the caller has hashed to the sample's id
    (`add` re-adding a file whose recorded path is gone); a sample quarantined as missing
    is released as in `relocate`."""
    moved = Relocated(sample.id, sample.path, new_path, sample.pool, release_pool(store, sample))
    _apply(store, [moved], {sample.id: sample}, actor)
    return moved
