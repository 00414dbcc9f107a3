"""Carving a stratified holdout out of labeled data, grouped by patient when patients are known.

Without patients, each class gives exactly `round(fraction * n_class)` images, drawn with a
seeded generator. With patients, whole patients go to the holdout (cells of one patient are
never on both sides): patients are visited largest first (ties in a seeded random order) and one
joins the holdout when that brings the per-class holdout counts closer to their targets.

A holdout with fewer than `MIN_HOLDOUT_PER_CLASS` cells of some class gives metrics too noisy to
trust (one cell more or less right moves that class's recall by 10 % or more); `holdout_warning`
says so, for `sslall round` and `sslall status`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

# Below this many holdout cells of a class, its F1 and the calibration are too noisy to trust.
MIN_HOLDOUT_PER_CLASS = 10


class _Entry(Protocol):
    path: str
    label: str | None
    patient: str | None


class HoldoutPlanner:
    """Decides, once and up front, which entries of an import go to the holdout."""

    def __init__(self, entries: Sequence[_Entry], fraction: float, seed: int = 0) -> None:
        if not 0 < fraction < 1:
            raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        grouped = any(e.patient for e in entries)
        self._chosen: set[str] = (
            self._by_patient(entries, fraction, rng) if grouped
            else self._by_class(entries, fraction, rng)
        )

    def is_holdout(self, entry: _Entry) -> bool:
        return entry.path in self._chosen

    @property
    def size(self) -> int:
        return len(self._chosen)

    @staticmethod
    def _by_class(entries: Sequence[_Entry], fraction: float, rng: np.random.Generator) -> set[str]:
        per_class: dict[str | None, list[str]] = defaultdict(list)
        for e in entries:
            per_class[e.label].append(e.path)
        chosen: set[str] = set()
        for label in sorted(per_class, key=str):
            paths = per_class[label]
            k = int(round(fraction * len(paths)))
            chosen.update(paths[i] for i in rng.permutation(len(paths))[:k])
        return chosen

    @staticmethod
    def _by_patient(entries: Sequence[_Entry], fraction: float,
                    rng: np.random.Generator) -> set[str]:
        groups: dict[str, list[_Entry]] = defaultdict(list)
        for e in entries:
            groups[e.patient or f"\0{e.path}"].append(e)
        totals = Counter(e.label for e in entries)
        target = {c: fraction * n for c, n in totals.items()}
        held: Counter = Counter()
        names = sorted(groups)
        order = [names[i] for i in rng.permutation(len(names))]
        order.sort(key=lambda g: -len(groups[g]))
        chosen: set[str] = set()
        for g in order:
            counts = Counter(e.label for e in groups[g])
            before = sum((held[c] - target[c]) ** 2 for c in target)
            after = sum((held[c] + counts[c] - target[c]) ** 2 for c in target)
            if after < before:
                held.update(counts)
                chosen.update(e.path for e in groups[g])
        return chosen


def holdout_warning(per_class: dict[str | None, int], classes: Sequence[str]) -> str | None:
    """One line when the holdout is non-empty but holds fewer than `MIN_HOLDOUT_PER_CLASS`
    cells of some class (`per_class`: holdout cells per label); None when it is fine or empty
    (an empty holdout gives no metrics at all, which `round` says on its own)."""
    if not any(per_class.get(c, 0) for c in classes):
        return None
    small = [f"{c} {per_class.get(c, 0)}" for c in classes if per_class.get(c, 0) < MIN_HOLDOUT_PER_CLASS]
    if not small:
        return None
    return (f"the holdout has fewer than {MIN_HOLDOUT_PER_CLASS} cells of class(es) "
            f"{', '.join(small)}: its metrics are too noisy to trust; add more with "
            "`sslall add holdout` or `sslall holdout carve --fraction 0.2`")
