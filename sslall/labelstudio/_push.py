"""Push the review queue to Label Studio: one task per review sample not yet sent.

Every `review` sample not yet sent becomes one task, data `{image, sample_id}` (plus `visit` from
the second time a sample comes back to review, and `ood_score` and `ood` when the round that
sent it to review recorded them: its out-of-distribution score and whether it is above the
threshold at the configured `ood.quantile`, see `sslall.decide._ood`; and `sslall_score`,
`sslall_rank`: the acquisition score and rank the round gave it, see `sslall.labelstudio._refresh`),
with the model's guess as a pre-annotation (`model_version` = round, `score` = calibrated
confidence). Each push then gives the tasks still open the newest round's guess (`_refresh`). The project is
created on first use with a single-choice config of the workspace classes.

Idempotence. Label Studio does not deduplicate and reuses task ids, so the key is always our
sample id (with its visit), recorded in the pool store's `labelstudio_tasks` table, one
transaction per batch *after* the server created the batch. Before its first batch a push marks
the store "push in progress" (meta `labelstudio_push_pending`), and clears the mark after its
last. A push killed, or failing, in between leaves the mark: the next push then lists the
project's tasks and adopts those whose `sample_id` it had not recorded before creating any, and
a pull adopts such a task when it finds it annotated (`sslall.labelstudio._pull`). So no task is
ever created twice, and a push that never got an answer is simply sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslall._faults import fault_point
from sslall.config import Config
from sslall.decide._ood import read_ood
from sslall.errors import ModelError, SslallError, UsageError
from sslall.labelstudio import _records as records
from sslall.labelstudio._client import (
    CAM_NAME,
    LabelStudioClient,
    choice_result,
    require_sdk,
    resolve_path,
)
from sslall.labelstudio._project import connect, project_id
from sslall.labelstudio._refresh import queue_fields, refresh_open_tasks
from sslall.store._pools import PoolStore
from sslall.store._records import Sample
from sslall.workspace import Workspace

__all__ = ["PushReport", "push", "push_if_configured"]


@dataclass
class PushReport:
    """What a push did; `error` (one line) is set only by `push_if_configured`."""

    project_id: int | None = None
    created_project: bool = False
    pushed: int = 0
    recovered: int = 0
    already: int = 0
    refreshed: int = 0
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(vars(self))


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
    require_sdk()  # before the config checks: without the SDK, fixing them would not help
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
        return _refreshed(client, store, base, pid, report)
    if records.push_pending(store) is not None:  # an earlier push stopped half-way: adopt what it made
        report.recovered = _recover(client, store, pid, wanted)
    todo = [(key, s) for key, s in wanted.items() if records.open_visit(store, s, pid) is None]
    ood = _review_ood(config, base, [s for _, s in todo])
    if root is not None:
        _ensure_storages(client, pid, root, [s for _, s in todo])
    records.set_push_pending(store, pid)
    for start in range(0, len(todo), ls.batch_size):
        batch = todo[start:start + ls.batch_size]
        tasks = [_task(client, pid, root, s, visit, config.classes, overlay, ood.get(s.id))
                 for (_, visit), s in batch]
        ids = client.import_tasks(pid, tasks)
        fault_point("labelstudio-push")
        task_ids: list[int | None] = list(ids) if len(ids) == len(batch) else [None] * len(batch)
        records.remember(store, [(s.id, pid, tid, visit, s.round)
                          for ((_, visit), s), tid in zip(batch, task_ids, strict=True)])
        report.pushed += len(batch)
    records.set_push_pending(store, None)
    return _refreshed(client, store, base, pid, report)


def _refreshed(client: LabelStudioClient, store: PoolStore, base: Path | None, pid: int,
               report: PushReport) -> PushReport:
    """The report, after the open tasks got the newest round's guess (`_refresh`)."""
    if base is not None:
        report.refreshed = refresh_open_tasks(client, store, base, pid)
    return report


def push_if_configured(ws: Workspace, config: Config, store: PoolStore) -> PushReport | None:
    """Push when `labelstudio.url` is set; server trouble becomes `report.error`, never an
    exception, so a round goes on. Call it holding the round lock."""
    if not config.labelstudio.url:
        return None
    try:
        return push(store, config, base=ws.root)
    except SslallError as exc:
        return PushReport(error=f"Label Studio push skipped: {exc}")


def _review_ood(config: Config, base: Path | None, samples: list[Sample]
                ) -> dict[str, tuple[float, bool]]:
    """(OOD score, above the threshold) of each sample, from the `ood.json` of the round that
    sent it to review (the round whose guess the task's pre-annotation shows); none for a
    sample whose round folder has no OOD files, or without a workspace root. Damaged OOD files
    cost the tasks their OOD fields, never the push."""
    if base is None:
        return {}
    out: dict[str, tuple[float, bool]] = {}
    for round_no in sorted({s.round for s in samples if s.round}):
        try:
            found = read_ood(Workspace(base).round_dir(round_no))
        except ModelError:
            continue
        if found is None:
            continue
        cal, meta = found
        threshold = cal.with_quantile(config.ood.quantile).threshold
        scores = meta.get("review", {})
        out |= {s.id: (float(scores[s.id]), float(scores[s.id]) > threshold)
                for s in samples if s.round == round_no and s.id in scores}
    return out


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
          classes: tuple[str, ...], overlay: Callable[[Sample], Path] | None = None,
          ood: tuple[float, bool] | None = None) -> dict:
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
    if ood is not None:
        data["ood_score"], data["ood"] = ood
    data |= queue_fields(s.reason)
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
