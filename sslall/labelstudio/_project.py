"""The workspace's Label Studio project, and the review queue's standing in it.

`project_id` finds the configured project (a push creates it on first use, with a single-choice
config of the workspace classes). `status`, per predicted class: queued (in review, not sent),
pushed, annotated (waiting for a pull) and pending (sent, not yet answered). Pushing and pulling
are in `sslall.labelstudio._push` and `sslall.labelstudio._pull`.
"""

from __future__ import annotations

from pathlib import Path

from sslall.config import Config
from sslall.errors import LabelStudioError
from sslall.labelstudio import _records as records
from sslall.labelstudio._client import LabelStudioClient, config_choices, config_has_cam, label_config
from sslall.store._pools import PoolStore

__all__ = ["ProjectMissing", "connect", "project_id", "status"]


class ProjectMissing(LabelStudioError):
    """The configured project title does not exist (yet) on the server."""


def connect(config: Config, base: Path | None) -> LabelStudioClient:
    """A client for the configured server (`labelstudio.url`, its token); `base` resolves
    relative paths of the config."""
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
