"""The files of one round: `runs/round-NNNN/` with the checkpoint, metrics and predictions.

Written into a partial folder first and renamed into place, so a reader never sees half a round.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from typing import TYPE_CHECKING

import numpy as np

from sslall._faults import fault_point
from sslall._fsutil import fsync_dir, write_atomic
from sslall.store._records import Move

if TYPE_CHECKING:
    from sslall.config import OodConfig
    from sslall.decide._label_issues import LabelIssue
    from sslall.model._learner import Learner
    from sslall.store._snapshot import Snapshot
    from sslall.workspace import Workspace

LABEL_ISSUES_FILE = "label_issues.csv"
PREDICTION_COLUMNS = ("sample_id", "path", "pool", "label", "prediction", "confidence", "margin",
                      "entropy", "routed_to")


def write_run_dir(ws: Workspace, round_no: int, learner: Learner, temperature: float,
                  summary: dict, snapshot: Snapshot, probs: np.ndarray,
                  moves: list[Move], weights: dict[str, float],
                  embeddings: np.ndarray | None = None,
                  label_issues: list[LabelIssue] | None = None, ood: OodConfig | None = None) -> None:
    """Write checkpoint, metrics.json (`summary`: the round's record and its extras),
    predictions.csv, label_issues.csv (the suspected human label errors, most suspect first;
    not written when the round did not search), the report's data (reliability, embedding
    sample, training history; `sslall.report._data`) and, with `ood` and `embeddings`, the OOD reference and
    calibration (`sslall.decide._ood`), then rename the folder into place."""
    from sslall.model._checkpoints import save_checkpoint
    from sslall.report._data import write_history, write_report_data

    final = ws.round_dir(round_no)
    tmp = ws.partial_round_dir(round_no)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        state, meta = learner.checkpoint(temperature=temperature, round_no=round_no,
                                         metrics=summary["metrics"])
        save_checkpoint(tmp, state, meta)
        fault_point("checkpoint-written")
        write_atomic(tmp / "metrics.json", json.dumps(summary, indent=2, default=float))
        _write_predictions(tmp / "predictions.csv", snapshot, probs, moves, weights)
        if label_issues is not None:
            _write_label_issues(tmp / LABEL_ISSUES_FILE, label_issues)
        write_report_data(tmp, snapshot, probs, temperature, embeddings, seed=round_no)
        write_history(tmp, round_no, learner.mode, learner.history)
        if ood is not None and embeddings is not None:
            _write_ood(tmp, snapshot, embeddings, moves, ood, seed=round_no)
        fsync_dir(tmp)
    except BaseException:  # a full disk, say: leave no half-written folder taking space
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # left by a round that never committed: the store is the truth
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def _write_predictions(path, snapshot: Snapshot, probs: np.ndarray, moves: list[Move],
                       weights: dict[str, float]) -> None:
    routed = {m.sample_id: m.to_pool for m in moves}
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.hstack([probs, probs])
    margin = top2[:, 1] - top2[:, 0]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    pred = probs.argmax(1)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        for i, s in enumerate(snapshot.rows):
            to = routed.get(s.id) or ("up-weighted" if s.id in weights else "")
            writer.writerow([s.id, s.path, s.pool, s.label or "", snapshot.classes[pred[i]],
                             f"{probs[i, pred[i]]:.5f}", f"{margin[i]:.5f}", f"{entropy[i]:.5f}",
                             to])
        for m in snapshot.quarantine:
            writer.writerow([m.sample_id, "", m.from_pool, "", "", "", "", "", "quarantine"])
        handle.flush()
        os.fsync(handle.fileno())


def _write_label_issues(path, issues: list[LabelIssue]) -> None:
    from sslall.decide._label_issues import LABEL_ISSUE_COLUMNS

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_ISSUE_COLUMNS)
        writer.writerows([issue.as_dict()[c] for c in LABEL_ISSUE_COLUMNS] for issue in issues)
        handle.flush()
        os.fsync(handle.fileno())


def read_label_issues(run_dir) -> list[dict] | None:
    """The rows of a round folder's label_issues.csv, most suspect first (probabilities and
    quality as floats); None when the round wrote none."""
    path = run_dir / LABEL_ISSUES_FILE
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return None
    for row in rows:
        for key in ("p_label", "p_suggested", "quality"):
            row[key] = float(row[key])
    return rows


def _write_ood(folder, snapshot: Snapshot, embeddings: np.ndarray, moves: list[Move],
               ood: OodConfig, seed: int) -> None:
    """The OOD files: reference = the labeled pool's embeddings, calibrated on the holdout; the
    summary counts flagged cells per pool (as the round found them) and scores the review queue
    the round leaves. Nothing is written with fewer than 2 labeled cells."""
    from sslall.decide._ood import calibrate_ood, round_ood_summary, write_ood

    cal = calibrate_ood(embeddings, snapshot.mask("labeled"), snapshot.mask("holdout"), k=ood.k,
                        quantile=ood.quantile, max_reference=ood.max_reference, seed=seed)
    if cal is None:
        return
    review = {s.id for s in snapshot.rows if s.pool == "review"}
    review |= {m.sample_id for m in moves if m.to_pool == "review"}
    summary = round_ood_summary(cal, embeddings, [s.id for s in snapshot.rows],
                                [s.pool for s in snapshot.rows], review, seed=seed)
    write_ood(folder, cal, summary)
