"""What a push adds for the annotators' queue: the acquisition score and rank of each new
task, and the newest round's guess on the tasks still waiting.

Score and rank come from the review move's reason, which the round writes as
``margin 0.04, rank 3 of 120 candidates`` (`sslall.decide._route`; a batch strategy such as
coreset writes ``coreset: pick 3 of 10 among ...``, a rank without a score). They go into the
task data as `sslall_score` (the strategy's score as the reason shows it: for margin the gap
p1 - p2, small = unsure; for entropy large = unsure) and `sslall_rank` (1 = the cell the round
wanted labelled most), so the Data Manager can sort by them.

A task keeps the prediction of the round that sent it until a later round exists: then the next
push replaces sslall's prediction on every still-open task by that round's guess (class and
calibrated confidence from its `predictions.csv`), once per round and project (meta
`labelstudio_predictions_round`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from sslall.labelstudio import _records as records
from sslall.labelstudio._client import LabelStudioClient
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace

__all__ = ["queue_fields", "refresh_open_tasks"]

REFRESHED_KEY = "labelstudio_predictions_round"
_SCORED = re.compile(r"^[\w-]+ (?P<score>[-+0-9.eE]+|nan|inf|-inf), rank (?P<rank>\d+) of ")
_PICKED = re.compile(r"^[\w-]+: pick (?P<rank>\d+) of ")


def queue_fields(reason: str | None) -> dict[str, float | int]:
    """`sslall_score` / `sslall_rank` read from a review move's reason (empty when it has none)."""
    if not reason:
        return {}
    if found := _SCORED.match(reason):
        return {"sslall_score": float(found["score"]), "sslall_rank": int(found["rank"])}
    if found := _PICKED.match(reason):
        return {"sslall_rank": int(found["rank"])}
    return {}


def refresh_open_tasks(client: LabelStudioClient, store: PoolStore, base: Path, pid: int) -> int:
    """Give every open task of project `pid` sent before the newest round that round's guess,
    removing sslall's older predictions on it; returns how many tasks changed. Nothing when
    the newest round's folder (or its predictions.csv) is gone, or it was done already."""
    newest = store.last_round()
    if not newest or records.meta_value(store, REFRESHED_KEY) == f"{pid}:{newest}":
        return 0
    stale = [(sid, tid) for sid, tid, sent in records.open_tasks(store, pid) if sent < newest]
    guesses = _guesses(Workspace(base).round_dir(newest) / "predictions.csv", {s for s, _ in stale})
    if guesses is None:
        return 0
    version = f"round-{newest}"
    changed = 0
    for sid, tid in stale:
        if sid not in guesses:
            continue
        label, confidence = guesses[sid]
        old = client.predictions(tid)
        if any(v == version for _, v in old):
            continue
        client.add_prediction(tid, label, confidence, version)
        for pred_id, v in old:
            if v.startswith("round-"):
                client.delete_prediction(pred_id)
        changed += 1
    records.set_meta(store, REFRESHED_KEY, f"{pid}:{newest}")
    return changed


def _guesses(path: Path, wanted: set[str]) -> dict[str, tuple[str, float | None]] | None:
    """(prediction, confidence) per wanted sample from a round's predictions.csv; None when the
    file is missing."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("sample_id") in wanted]
    except FileNotFoundError:
        return None
    out: dict[str, tuple[str, float | None]] = {}
    for r in rows:
        if r.get("prediction"):
            try:
                confidence: float | None = round(float(r["confidence"]), 6)
            except (TypeError, ValueError):
                confidence = None
            out[r["sample_id"]] = (r["prediction"], confidence)
    return out
