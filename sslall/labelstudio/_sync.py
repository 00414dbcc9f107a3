"""The review queue in Label Studio: push cells to annotators, pull their answers back.

push   every `review` sample not yet sent becomes one task, data `{image, sample_id}` (plus
       `visit` from the second time a sample comes back to review), with the model's guess as a
       pre-annotation (`model_version` = round, `score` = calibrated confidence). The project is
       created on first use with a single-choice config of the workspace classes.
pull   finished annotations move review -> labeled (`label_source = labelstudio`, annotator and
       time in the event); a skipped task moves review -> unlabeled; a label that is not a class
       is rejected and reported, the sample stays in review.
status per predicted class: queued (in review, not sent), pushed, annotated, pending.

Idempotence. Label Studio does not deduplicate and reuses task ids, so the key is always our
sample id (with its visit), recorded in the pool store's `labelstudio_tasks` table, one
transaction per batch *after* the server created the batch. Before its first batch a push marks
the store "push in progress" (meta `labelstudio_push_pending`), and clears the mark after its
last. A push killed, or failing, in between leaves the mark: the next push then lists the
project's tasks and adopts those whose `sample_id` it had not recorded before creating any, and
a pull adopts such a task when it finds it annotated. So no task is ever created twice, and a
push that never got an answer is simply sent again.

Several annotations of one task: cancelled ones are skips, the others vote; the class with
most votes wins, a tie goes to the tied class annotated last; a task whose annotations are all
skips is skipped; one whose only non-skip annotations are invalid stays in review.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslall._faults import fault_point
from sslall.config import Config
from sslall.errors import LabelStudioError, SslallError, UsageError
from sslall.labelstudio import _records as records
from sslall.labelstudio._client import (
    CAM_NAME,
    LabelStudioClient,
    choice_result,
    config_choices,
    config_has_cam,
    decide,
    label_config,
    resolve_path,
)
from sslall.store._pools import PoolStore
from sslall.store._records import Move, Sample, utc_now
from sslall.store._review_csv import agrees, answer_move

if TYPE_CHECKING:
    from sslall.workspace import Workspace

SOURCE = "labelstudio"


@dataclass
class PushReport:
    """What a push did; `error` (one line) is set only by `push_if_configured`."""

    project_id: int | None = None
    created_project: bool = False
    pushed: int = 0
    recovered: int = 0
    already: int = 0
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(vars(self))


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


class ProjectMissing(LabelStudioError):
    """The configured project title does not exist (yet) on the server."""


# -- connecting ------------------------------------------------------------------------------


def connect(config: Config, base: Path | None) -> LabelStudioClient:
    return LabelStudioClient.from_config(config.labelstudio, base)


def project_id(client: LabelStudioClient, config: Config, *, create: bool,
               cam: bool = False) -> tuple[int, bool]:
    """The configured project's id (created by a push when a title is unknown), and whether
    it was created now. An existing project must offer every workspace class; with `cam`, its
    labelling config gains the Grad-CAM overlay field if it lacks it."""
    name = config.labelstudio.project
    found = client.find_project(name)
    if found is None:
        if not create:
            raise ProjectMissing(f"no Label Studio project titled {name!r} at {client.url} "
                                   "(`sslall label push` creates it)")
        return client.create_project(name, config.classes, cam=cam), True
    pid, xml = found
    missing = [c for c in config.classes if c not in config_choices(xml)]
    if missing:
        raise LabelStudioError(f"Label Studio project {pid} does not offer the class(es) "
                               f"{missing}; use a new labelstudio.project")
    if cam and not config_has_cam(xml):
        client.set_label_config(pid, label_config(config.classes, cam=True))
    return pid, False


def _recover(client: LabelStudioClient, store: PoolStore, pid: int,
             wanted: dict[tuple[str, int], Sample]) -> int:
    """Adopt server tasks of `wanted` (sample, visit) keys that were created but never recorded
    (a push killed between the server's create and our commit)."""
    found: dict[tuple[str, int], int] = {}
    for task_id, data, _ in client.tasks(pid, annotated=False):
        key = records.task_key(data)
        if key in wanted and key not in found:
            found[key] = task_id
    if found:
        records.remember(store, [(sid, pid, tid, visit, wanted[(sid, visit)].round)
                          for (sid, visit), tid in found.items()])
    return len(found)


# -- push ------------------------------------------------------------------------------------


def push(store: PoolStore, config: Config, *, base: Path | None = None,
         client: LabelStudioClient | None = None,
         overlay: Callable[[Sample], Path] | None = None) -> PushReport:
    """Send every review sample that has no open task yet (see the module docstring).

    With `overlay` (sample -> PNG or JPEG file, e.g. a Grad-CAM picture), each new task also
    carries that picture in its `cam` field, which the labelling config shows under the cell. It
    travels inside the task as a `data:` URI: Label Studio refuses a file upload to a project
    whose config has two image fields (it cannot tell which one the file is for).
    The caller holds the workspace's round lock, so no other push runs at the same time.
    """
    ls = config.labelstudio
    root = _document_root(config, base)
    if client is None:
        with connect(config, base) as own:
            return push(store, config, base=base, client=own, overlay=overlay)
    pid, created = project_id(client, config, create=True, cam=overlay is not None)
    report = PushReport(project_id=pid, created_project=created)
    wanted: dict[tuple[str, int], Sample] = {}
    for s in store.samples("review"):
        if records.open_visit(store, s, pid) is not None:
            report.already += 1
        else:
            wanted[(s.id, records.next_visit(store, s, pid))] = s
    if root is not None:
        _check_paths(root, list(wanted.values()))
    if not wanted:
        return report
    if records.push_pending(store) is not None:  # an earlier push stopped half-way: adopt what it made
        report.recovered = _recover(client, store, pid, wanted)
    todo = [(key, s) for key, s in wanted.items() if records.open_visit(store, s, pid) is None]
    if root is not None:
        _ensure_storages(client, pid, root, [s for _, s in todo])
    records.set_push_pending(store, pid)
    for start in range(0, len(todo), ls.batch_size):
        batch = todo[start:start + ls.batch_size]
        tasks = [_task(client, pid, root, s, visit, config.classes, overlay)
                 for (_, visit), s in batch]
        ids = client.import_tasks(pid, tasks)
        fault_point("labelstudio-push")
        task_ids: list[int | None] = list(ids) if len(ids) == len(batch) else [None] * len(batch)
        records.remember(store, [(s.id, pid, tid, visit, s.round)
                          for ((_, visit), s), tid in zip(batch, task_ids, strict=True)])
        report.pushed += len(batch)
    records.set_push_pending(store, None)
    return report


def _document_root(config: Config, base: Path | None) -> Path | None:
    """The local-files document root (None in upload mode)."""
    ls = config.labelstudio
    if ls.images != "local-files":
        return None
    if not ls.document_root:
        raise UsageError("labelstudio.document_root is not set (images = \"local-files\" needs "
                         "the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
    return resolve_path(ls.document_root, base).resolve()


def _relative(root: Path, path: str) -> Path | None:
    try:
        return Path(path).resolve().relative_to(root)
    except ValueError:
        return None


def _check_paths(root: Path, samples: list[Sample]) -> None:
    """Refuse, before sending anything, a sample Label Studio could not serve from the root
    (outside it, or directly in it: a local storage must be a sub-folder)."""
    bad = [s.path for s in samples if len((_relative(root, s.path) or Path()).parts) < 2]
    if bad:
        raise UsageError(f"{len(bad)} review image(s) are not inside a sub-folder of "
                         f"labelstudio.document_root {root} (first: {bad[0]}); Label Studio "
                         "cannot serve them: move the root up, or set images = \"upload\"")


def _ensure_storages(client: LabelStudioClient, pid: int, root: Path,
                     samples: list[Sample]) -> None:
    """One local storage per top-level folder under the root (Label Studio serves a local
    file only under a storage of the project, and a storage cannot be the root itself)."""
    needed = {root / rel.parts[0] for s in samples if (rel := _relative(root, s.path))}
    have = client.local_storage_paths(pid)
    for folder in sorted(needed):
        if str(folder) not in have:
            client.add_local_storage(pid, folder)


def _task(client: LabelStudioClient, pid: int, root: Path | None, s: Sample, visit: int,
          classes: tuple[str, ...], overlay: Callable[[Sample], Path] | None = None) -> dict:
    if root is not None:
        rel = _relative(root, s.path)
        image = f"/data/local-files/?d={rel.as_posix()}" if rel else ""
    else:
        image = client.upload(pid, Path(s.path))
    data: dict[str, Any] = {"image": image, "sample_id": s.id}
    if overlay is not None:
        data[CAM_NAME] = _data_uri(overlay(s))
    if visit > 1:
        data["visit"] = visit
    task: dict[str, Any] = {"data": data}
    if s.prediction in classes:
        prediction: dict[str, Any] = {"model_version": f"round-{s.round}",
                                      "result": choice_result(s.prediction)}
        if s.confidence is not None:
            prediction["score"] = round(float(s.confidence), 6)
        task["predictions"] = [prediction]
    return task


def _data_uri(path: Path) -> str:
    import base64

    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


# -- pull ------------------------------------------------------------------------------------


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


# -- status ----------------------------------------------------------------------------------


def status(store: PoolStore, config: Config, *, base: Path | None = None,
           client: LabelStudioClient | None = None) -> dict:
    """Per class of the model's guess: queued (in review, not sent), pushed, annotated (waiting
    for a pull) and pending (sent, not yet answered)."""
    if client is None:
        with connect(config, base) as own:
            return status(store, config, base=base, client=own)
    found = client.find_project(config.labelstudio.project)
    pid = found[0] if found else None
    annotated = set()
    if pid is not None:
        annotated = {key for _, data, _ in client.tasks(pid, annotated=True)
                     if (key := records.task_key(data))}
    keys = ("queued", "pushed", "annotated", "pending")
    rows: dict[str, dict[str, int]] = {}
    for s in store.samples("review"):
        per = rows.setdefault(str(s.prediction), dict.fromkeys(keys, 0))
        visit = records.open_visit(store, s, pid) if pid is not None else None
        if visit is None:
            per["queued"] += 1
            continue
        per["pushed"] += 1
        per["annotated" if (s.id, visit) in annotated else "pending"] += 1
    total = {k: sum(r[k] for r in rows.values()) for k in keys}
    return {"url": client.url, "project": config.labelstudio.project, "project_id": pid,
            "per_class": dict(sorted(rows.items())), "total": total}


# -- inside a round --------------------------------------------------------------------------


def pull_if_configured(ws: Workspace, config: Config, store: PoolStore) -> PullReport | None:
    """Pull when `labelstudio.url` is set; server trouble becomes `report.error`, never an
    exception, so a round goes on with the review queue intact."""
    if not config.labelstudio.url:
        return None
    try:
        return pull(store, config, base=ws.root, missing_ok=True)
    except SslallError as exc:
        return PullReport(error=f"Label Studio pull skipped: {exc}")


def push_if_configured(ws: Workspace, config: Config, store: PoolStore) -> PushReport | None:
    """Push when `labelstudio.url` is set; like `pull_if_configured`, failures become
    `report.error`. Call it holding the round lock."""
    if not config.labelstudio.url:
        return None
    try:
        return push(store, config, base=ws.root)
    except SslallError as exc:
        return PushReport(error=f"Label Studio push skipped: {exc}")
