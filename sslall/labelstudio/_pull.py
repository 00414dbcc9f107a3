"""Pull answers back from Label Studio: finished annotations leave the review queue.

Finished annotations move review -> labeled (`label_source = labelstudio`, annotator and time in
the event); a skipped task moves review -> unlabeled; a label that is not a class is rejected and
reported, the sample stays in review. A task a killed push created but never recorded is adopted
here when it is found annotated (see `sslall.labelstudio._push`).

Several annotations of one task: cancelled ones are skips, the others vote; the class with
most votes wins, a tie goes to the tied class annotated last; a task whose annotations are all
skips is skipped; one whose only non-skip annotations are invalid stays in review.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sslall._faults import fault_point
from sslall.config import Config
from sslall.errors import SslallError
from sslall.labelstudio import _records as records
from sslall.labelstudio._client import LabelStudioClient, decide
from sslall.labelstudio._project import ProjectMissing, connect, project_id
from sslall.store._pools import PoolStore
from sslall.store._records import Move, utc_now
from sslall.store._review_csv import agrees, answer_move

if TYPE_CHECKING:
    from sslall.workspace import Workspace

__all__ = ["PullReport", "pull", "pull_if_configured"]

SOURCE = "labelstudio"


@dataclass
class PullReport:
    """What a pull did; `rejected` holds one line per refused annotation."""

    labeled: int = 0
    skipped: int = 0
    agree: int = 0
    disagree: int = 0
    already: int = 0
    elsewhere: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(vars(self))


def pull(store: PoolStore, config: Config, *, base: Path | None = None,
         client: LabelStudioClient | None = None, missing_ok: bool = False) -> PullReport:
    """Apply finished annotations (see the module docstring); the caller holds the round lock.
    `missing_ok`: a project title nothing was pushed to yet is an empty pull, not an error."""
    if client is None:
        with connect(config, base) as own:
            return pull(store, config, base=base, client=own, missing_ok=missing_ok)
    try:
        pid, _ = project_id(client, config, create=False)
    except ProjectMissing:
        if missing_ok:
            return PullReport()
        raise
    users = client.user_names()
    report = PullReport()
    batch: list[tuple[int, dict, list[dict]]] = []
    for task in client.tasks(pid, annotated=True, full=True,
                             page_size=config.labelstudio.batch_size):
        batch.append(task)
        if len(batch) >= config.labelstudio.batch_size:
            _pull_batch(store, config, pid, batch, users, report)
            batch = []
    _pull_batch(store, config, pid, batch, users, report)
    return report


def pull_if_configured(ws: Workspace, config: Config, store: PoolStore) -> PullReport | None:
    """Pull when `labelstudio.url` is set; server trouble becomes `report.error`, never an
    exception, so a round goes on with the review queue intact."""
    if not config.labelstudio.url:
        return None
    try:
        return pull(store, config, base=ws.root, missing_ok=True)
    except SslallError as exc:
        return PullReport(error=f"Label Studio pull skipped: {exc}")


def _pull_batch(store: PoolStore, config: Config, pid: int,
                batch: list[tuple[int, dict, list[dict]]], users: dict[int, str],
                report: PullReport) -> None:
    """Decide a page of tasks and commit its moves and records in one transaction."""
    moves: dict[str, list[Move]] = defaultdict(list)
    resolved: list[tuple[str, str]] = []
    adopt: list[tuple[str, int, int | None, int, int]] = []
    seen: set[str] = set()
    for task_id, data, anns in batch:
        key = records.task_key(data)
        sample = store.get(key[0]) if key else None
        if key is None or sample is None:
            report.rejected.append(f"task {task_id}: no sample {str(data.get('sample_id'))[:12]!r}"
                                   " in this workspace")
            continue
        if (sample.pool == "review" and records.open_visit(store, sample, pid) is None
                and key[1] == records.next_visit(store, sample, pid)):
            adopt.append((sample.id, pid, task_id, key[1], sample.round))  # push killed mid-way
            rec: tuple | None = (pid, key[1], task_id, None)
        else:
            rec = records.get(store, sample.id)
        if rec is None or rec[0] != pid or rec[1] != key[1] or rec[3] is not None \
                or sample.id in seen:
            report.already += 1
            continue
        seen.add(sample.id)
        if sample.pool != "review":
            report.elsewhere += 1
            resolved.append((f"answered elsewhere: now in {sample.pool}", sample.id))
            continue
        d = decide(anns, config.classes, users)
        report.rejected += [f"sample {sample.id[:12]} (task {task_id}): {p}" for p in d.invalid]
        if d.kind == "none":
            continue
        by = f"{d.annotator} in Label Studio at {d.time}"
        move = answer_move(sample, d.label, source=SOURCE, by=by if d.kind == "skip" else
                           f"{by} ({d.rule})")
        moves[f"{SOURCE}:{d.annotator}"].append(move)
        if d.kind == "skip":
            resolved.append(("skipped", sample.id))
            report.skipped += 1
            continue
        agree = agrees(sample, d.label or "")
        report.agree += agree
        report.disagree += not agree
        report.per_class[d.label or ""] = report.per_class.get(d.label or "", 0) + 1
        resolved.append((f"labeled {d.label}, {'agrees' if agree else 'disagrees'} with the "
                         "model", sample.id))
        report.labeled += 1
    if not (moves or resolved or adopt):
        return
    fault_point("labelstudio-pull")
    now = utc_now()
    with store.transaction() as conn:
        if adopt:
            records.remember(store, adopt)
        for actor, ms in moves.items():
            store.apply_moves(ms, round_no=store.last_round(), actor=actor)
        conn.executemany("UPDATE labelstudio_tasks SET resolved_at = ?, outcome = ? "
                         "WHERE sample_id = ?", [(now, o, sid) for o, sid in resolved])
