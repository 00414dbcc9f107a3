"""Crash safety with Label Studio: `label push`, `label pull`, a round and the server itself
SIGKILLed part way; the store stays consistent and the next command recovers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import Server, invoke, paused, sslall
from ls_review import assert_store_ok, pools, review_ws, task_ids

from sslall.labelstudio._client import choice_result
from sslall.store._pools import PoolStore

pytestmark = pytest.mark.labelstudio


def test_push_killed_after_the_server_made_a_batch_then_pull_killed(ls: Server, tmp_path: Path,
                                                                    runner) -> None:
    ws, ids = review_ws(tmp_path, ls, n=5, batch_size=2)
    marker = tmp_path / "paused"
    proc = paused(["label", "push", "-w", ws], "labelstudio-push", marker)
    proc.kill()
    proc.communicate()
    assert len(task_ids(ls, ws)) == 2                  # made on the server, not recorded here
    report = json.loads(invoke(runner, "label", "push", "-w", ws, "--json").stdout)
    assert (report["recovered"], report["pushed"]) == (2, 3)
    tasks = task_ids(ls, ws)
    assert sorted(tasks) == sorted(ids)

    sdk = ls.sdk
    for i in (0, 1):
        sdk.annotations.create(id=tasks[ids[i]], result=choice_result("L1"))
    before = pools(ws)
    marker.unlink()
    proc = paused(["label", "pull", "-w", ws], "labelstudio-pull", marker)
    proc.kill()
    proc.communicate()
    assert pools(ws) == before
    report = json.loads(invoke(runner, "label", "pull", "-w", ws, "--json").stdout)
    assert report["labeled"] == 2
    assert json.loads(invoke(runner, "label", "pull", "-w", ws, "--json").stdout)["labeled"] == 0
    assert_store_ok(ws)


def test_round_killed_in_its_pull_and_its_push_and_status_while_it_runs(ls: Server,
                                                                        tmp_path: Path,
                                                                        runner) -> None:
    """`sslall round` SIGKILLed inside its pull (before the round's commit: the pools are as
    they were) and inside its push (after the commit: the round stands and the next push
    recovers); `sslall status` and `sslall label status` answer while a round runs."""
    import signal as sig

    from test_rounds import build_workspace, sample_rows

    ws = build_workspace(tmp_path, runner)
    config = ws / "sslall.toml"
    config.write_text(config.read_text() + f'\n[labelstudio]\nurl = "{ls.url}"\nproject = '
                      f'"kill {tmp_path.name}"\napi_key_file = "{ls.key_file}"\n'
                      f'document_root = "{ls.root}"\n')
    marker = tmp_path / "paused"
    proc = paused(["round", "-w", ws], "train", marker)
    label_status = sslall("label", "status", "-w", ws, "--json")
    status = sslall("status", "-w", ws, "--json")
    marker.unlink()
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert label_status.returncode == 0, label_status.stderr
    assert json.loads(label_status.stdout)["total"]["queued"] == 0
    assert json.loads(status.stdout)["running"]["pid"] == proc.pid
    tasks = task_ids(ls, ws)
    assert len(tasks) == 4

    sdk = ls.sdk
    for task in list(tasks.values())[:2]:
        sdk.annotations.create(id=task, result=choice_result("L1"))
    before = sample_rows(ws)
    proc = paused(["round", "-w", ws], "labelstudio-pull", marker)
    os.kill(proc.pid, sig.SIGKILL)
    proc.communicate()
    assert sample_rows(ws) == before
    assert sslall("check", "-w", ws).returncode == 0

    marker.unlink()
    proc = paused(["round", "-w", ws], "labelstudio-push", marker)
    os.kill(proc.pid, sig.SIGKILL)
    proc.communicate()
    with PoolStore(ws / "pools" / "pools.db") as store:
        assert store.last_round() == 2                   # the push comes after the commit
    assert sslall("check", "-w", ws).returncode == 0
    report = json.loads(invoke(runner, "label", "push", "-w", ws, "--json").stdout)
    assert report["recovered"] > 0 and report["recovered"] + report["pushed"] == 4
    review = {s for s, p, _ in sample_rows(ws) if p == "review"}
    assert review <= set(task_ids(ls, ws))     # every review cell has one task, none has two
    again = sslall("round", "-w", ws)
    assert again.returncode == 0, again.stderr
    assert_store_ok(ws)


def test_server_killed_in_the_middle_of_a_push_and_restarted(ls_template: Path, tmp_path: Path,
                                                             tmp_path_factory, runner) -> None:
    from sslall.labelstudio._server import free_port

    data, root = tmp_path / "server", tmp_path_factory.getbasetemp()
    shutil.copytree(ls_template, data)
    port = free_port()
    up_args = ["labelstudio", "up", "--data-dir", data, "--port", port, "--document-root", root]
    up = sslall(*up_args, "--json")
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    server = Server(data, root, port)
    assert info["url"] == server.url and info["api_key_file"] == str(server.key_file)
    assert info["username"] and info["password"] and server.key not in up.stdout + up.stderr
    plain = sslall("labelstudio", "up", "--data-dir", data, "--port", port)
    assert plain.returncode == 2 and "already running" in plain.stderr
    try:
        ws, ids = review_ws(tmp_path, server, n=6, batch_size=2)
        marker = tmp_path / "paused"
        proc = paused(["label", "push", "-w", ws], "labelstudio-push", marker)
        os.kill(info["pid"], signal.SIGKILL)                # the server dies mid-push
        marker.unlink()                                     # the push goes on, and fails
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 5 and "Label Studio at" in err and "connection" in err, err
        assert err.strip().count("\n") == 0
        with PoolStore(ws / "pools" / "pools.db") as store:
            assert store.conn.execute("SELECT COUNT(*) FROM labelstudio_tasks").fetchone()[0] == 2

        again = sslall(*up_args)
        assert again.returncode == 0 and "log in as" in again.stdout, again.stderr
        report = json.loads(invoke(runner, "label", "push", "-w", ws, "--json").stdout)
        assert (report["pushed"], report["already"]) == (4, 2)
        assert sorted(task_ids(server, ws)) == sorted(ids)
        assert json.loads(invoke(runner, "label", "push", "-w", ws, "--json").stdout)["pushed"] == 0
    finally:
        down = sslall("labelstudio", "down", "--data-dir", data)
    assert down.returncode == 0 and "stopped Label Studio" in down.stdout
