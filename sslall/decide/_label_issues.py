"""Human labels the model confidently disagrees with, listed for a second look.

Confident learning (Northcutt et al., 2021, through the `cleanlab` library): a cell is a
suspected label issue when the model's out-of-sample probabilities put it, above its class's
threshold (the mean probability the model gives that class on cells labelled with it), in the
off-diagonal of the confident joint, pruned by the estimated noise rate. The probabilities must
be out-of-sample: a model trained on a label has learnt it and rarely disagrees, so the round
passes out-of-fold probabilities for the labeled pool and the holdout's own (never trained on).

Suspects are ranked by cleanlab's label quality score (the probability of the given label, the
"self-confidence"), lowest first. Nothing here moves a cell: the list is for people to read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sslall.store._snapshot import Snapshot

__all__ = ["LABEL_ISSUE_COLUMNS", "LabelIssue", "find_label_issues", "suspected_labels"]

LABEL_ISSUE_COLUMNS = ("sample_id", "path", "pool", "label", "suggested", "p_label", "p_suggested",
                       "quality")


@dataclass(frozen=True)
class LabelIssue:
    """One suspected human label: given `label`, the model's `suggested` class, their
    out-of-sample probabilities and cleanlab's label quality score (lower = more suspect)."""

    sample_id: str
    path: str
    pool: str
    label: str
    suggested: str
    p_label: float
    p_suggested: float
    quality: float

    def as_dict(self) -> dict:
        return {"sample_id": self.sample_id, "path": self.path, "pool": self.pool,
                "label": self.label, "suggested": self.suggested,
                "p_label": round(self.p_label, 5), "p_suggested": round(self.p_suggested, 5),
                "quality": round(self.quality, 5)}


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of suspected label issues, most suspect first; quality score of every row).

    `labels` [N] class indices, `probs` [N, C] out-of-sample probabilities. Fewer than two
    labelled rows or classes give no suspects (there is nothing to disagree with).

    Raises:
        ValueError: shapes that do not match, or a label outside 0..C-1.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be [N, C] with N = {len(labels)}, got shape {probs.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    if len(labels) < 2 or probs.shape[1] < 2:
        return np.zeros(0, dtype=np.int64), probs[np.arange(len(labels)), labels]
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    probs = probs / probs.sum(1, keepdims=True)
    with warnings.catch_warnings():  # "too few examples in class k": expected with small pools
        warnings.simplefilter("ignore")
        found = cl_find(labels, probs, filter_by="prune_by_noise_rate",
                        return_indices_ranked_by="self_confidence", n_jobs=1)
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return np.asarray(found, dtype=np.int64), np.asarray(quality, dtype=np.float64)


def suspected_labels(snapshot: Snapshot, rows: np.ndarray, probs: np.ndarray) -> list[LabelIssue]:
    """The suspected label issues among snapshot `rows` (human-labelled: labeled, holdout),
    given their out-of-sample `probs` [len(rows), C], most suspect first."""
    rows = np.asarray(rows, dtype=np.int64)
    labels = snapshot.label_index()[rows]
    found, quality = find_label_issues(labels, probs)
    issues = []
    for j in found:
        row = snapshot.rows[rows[j]]
        suggested = int(probs[j].argmax())
        issues.append(LabelIssue(row.id, row.path, row.pool, snapshot.classes[labels[j]],
                                 snapshot.classes[suggested], float(probs[j, labels[j]]),
                                 float(probs[j, suggested]), float(quality[j])))
    return issues
