"""Push and pull against the real server: every annotation rule, uploaded images and the
Grad-CAM overlay.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, Server, invoke, make_checkpoint, write_image
from ls_review import assert_store_ok, pools, review_ws, server_tasks, task_ids

from sslall._fsutil import sha256_file
from sslall.config import load_config
from sslall.decide._ood import OodCalibration, write_ood
from sslall.labelstudio._client import choice_result, config_choices
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample

pytestmark = pytest.mark.labelstudio


def test_push_pull_round_trip_with_every_annotation_rule(ls: Server, tmp_path: Path, runner,
                                                         ) -> None:
    ws, ids = review_ws(tmp_path, ls)
    # round 1's OOD files: calibration scores 0.01..0.1 (threshold 0.1 at the default 0.99)
    ref = np.eye(4, dtype=np.float32)
    (ws / "runs" / "round-0001").mkdir(parents=True)
    write_ood(ws / "runs" / "round-0001",
              OodCalibration(ref, np.linspace(0.01, 0.1, 10, dtype=np.float32), 2, 0.99, "holdout"),
              {"pools": {}, "review": {ids[0]: 0.5, ids[1]: 0.02}})
    result = invoke(runner, "label", "push", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["pushed"], report["created_project"]) == (6, True)
    again = json.loads(invoke(runner, "label", "push", "-w", ws, "--json").stdout)
    assert (again["pushed"], again["already"]) == (0, 6)
    tasks = task_ids(ls, ws)
    assert sorted(tasks) == sorted(ids)

    sdk = ls.sdk
    full = sdk.tasks.get(id=tasks[ids[1]])
    assert full.data["image"].startswith("/data/local-files/?d=") and full.data["sample_id"] == ids[1]
    assert (full.data["ood"], full.data["ood_score"]) == (False, 0.02)
    far = sdk.tasks.get(id=tasks[ids[0]]).data
    assert (far["ood"], far["ood_score"]) == (True, 0.5)
    assert "ood" not in sdk.tasks.get(id=tasks[ids[2]]).data  # not scored by the round
    pred = sdk.predictions.list(task=tasks[ids[1]])[0]
    assert pred.model_version == "round-1" and abs(pred.score - 0.45) < 1e-6
    assert pred.result[0]["value"]["choices"] == ["L2"]
    status = json.loads(invoke(runner, "label", "status", "-w", ws, "--json").stdout)
    assert status["total"] == {"queued": 0, "pushed": 6, "annotated": 0, "pending": 6}

    hema = sdk.users.create(username=f"hema{tmp_path.name[-6:]}", email=f"hema-{os.getpid()}@example.org",
                            password="not-used-0123")

    def annotate(i, label=None, **kw):
        sdk.annotations.create(id=tasks[ids[i]], result=choice_result(label) if label else [],
                               lead_time=3.5, completed_by=hema.id, **kw)

    annotate(0, "L1")                            # agrees with the model (L1)
    annotate(1, "L3")                            # disagrees (model: L2)
    annotate(2, was_cancelled=True)              # a skip
    annotate(3, "Bogus")                         # not a class: rejected, stays in review
    for label in ("L1", "L2", "L2"):             # majority: L2
        annotate(4, label)
    status = json.loads(invoke(runner, "label", "status", "-w", ws, "--json").stdout)
    assert status["total"] == {"queued": 0, "pushed": 6, "annotated": 5, "pending": 1}

    result = invoke(runner, "label", "pull", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    pulled = json.loads(result.stdout)
    assert (pulled["labeled"], pulled["skipped"], pulled["agree"], pulled["disagree"]) == (3, 1, 2, 1)
    assert pulled["per_class"] == {"L1": 1, "L2": 1, "L3": 1}
    assert len(pulled["rejected"]) == 1 and "'Bogus' is not a class" in pulled["rejected"][0]
    with PoolStore(ws / "pools" / "pools.db") as store:
        got = {i: store.get(ids[i]) for i in range(6)}
        events = {i: store.events(ids[i])[-1] for i in range(6)}
    assert [(got[i].pool, got[i].label, got[i].label_source) for i in (0, 1, 4)] == [
        ("labeled", "L1", "labelstudio"), ("labeled", "L3", "labelstudio"),
        ("labeled", "L2", "labelstudio")]
    assert got[2].pool == "unlabeled" and "skipped by hema-" in got[2].reason
    assert got[3].pool == "review" and got[5].pool == "review"
    assert events[0][-1] == f"labelstudio:{hema.email}" and "agrees with the model" in events[0][-2]
    assert "disagrees with the model (L2)" in events[1][-2] and "2 of 3 annotations" in events[4][-2]

    before = pools(ws)
    second = json.loads(invoke(runner, "label", "pull", "-w", ws, "--json").stdout)
    assert (second["labeled"], second["skipped"], second["already"]) == (0, 0, 4)
    assert pools(ws) == before
    assert_store_ok(ws)

    # the annotator fixes the invalid answer: the next pull takes it
    annotate(3, "L3")
    third = json.loads(invoke(runner, "label", "pull", "-w", ws, "--json").stdout)
    assert third["labeled"] == 1 and pools(ws)["review"] == 1


def test_uploaded_images(ls: Server, tmp_path: Path, runner) -> None:
    import httpx

    ws, ids = review_ws(tmp_path, ls, n=2, images="upload", document_root="")
    assert invoke(runner, "label", "push", "-w", ws).exit_code == 0
    with PoolStore(ws / "pools" / "pools.db") as store:
        expected = Path(store.get(ids[0]).path).read_bytes()
    task = next(d for _, d in server_tasks(ls, ws) if d["sample_id"] == ids[0])
    assert task["image"].startswith("/data/upload/")
    got = httpx.get(ls.url + task["image"], headers={"Authorization": f"Token {ls.key}"})
    assert got.status_code == 200 and got.content == expected


def test_push_with_cam_attaches_the_overlay_and_the_project_shows_it(ls: Server, tmp_path: Path,
                                                                     runner) -> None:
    import base64

    ws, ids = review_ws(tmp_path, ls, n=1)
    assert invoke(runner, "label", "push", "-w", ws).exit_code == 0  # a project without overlays
    later = write_image(tmp_path / "cells" / "later.png", 7000, size=20)
    with PoolStore(ws / "pools" / "pools.db") as store:
        store.add_samples([NewSample(sha256_file(later), str(later), "unlabeled")])
        store.apply_moves([Move(sha256_file(later), "review", from_pool="unlabeled",
                                prediction=CLASSES[1], confidence=0.5)], round_no=1)
    ckpt = make_checkpoint(tmp_path / "ckpt", "baseline-cnn", 32)
    result = invoke(runner, "label", "push", "--with-cam", "--checkpoint", ckpt, "-w", ws)
    assert result.exit_code == 0, result.output
    tasks = {d["sample_id"]: d for _, d in server_tasks(ls, ws)}
    new = tasks[sha256_file(later)]
    assert "cam" not in tasks[ids[0]] and new["cam"].startswith("data:image/jpeg;base64,")
    overlay = ws / "cam" / f"{sha256_file(later)[:16]}.cam.jpg"
    assert base64.b64decode(new["cam"].split(",", 1)[1]) == overlay.read_bytes()
    config = load_config(ws / "sslall.toml")
    with ls.client() as client:
        _, xml = client.find_project(config.labelstudio.project)
    assert '<Image name="cam" value="$cam"/>' in xml and config_choices(xml) == set(CLASSES)
