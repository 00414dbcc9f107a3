"""Label Studio: pure functions, then a real server (label-studio from PyPI, `make labelstudio`).

One data folder is migrated per test session (~30-60 s) and copied for each server (~4 s to
start). Most tests share one server, each in its own project; the tests that kill a server start
their own. Annotations are made through the API, as an annotator's browser would make them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import CLASSES, headless_chromium, invoke, make_checkpoint, paused, sslall, write_image

from sslall.config import Config, LabelStudioConfig, load_config
from sslall.data._images import sha256_file
from sslall.errors import ConfigError, LabelStudioError, NotFoundError
from sslall.labelstudio import _records as records
from sslall.labelstudio._client import (
    LabelStudioClient,
    choice_result,
    config_choices,
    decide,
    label_config,
    read_api_key,
)
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample
from sslall.workspace import create_workspace

pytestmark = pytest.mark.labelstudio

# -- pure functions --------------------------------------------------------------------------


def test_label_config_offers_exactly_the_classes_even_with_odd_names() -> None:
    classes = ("Pre-B", 'say "hi"', "A&B <1>", "L'3")
    assert config_choices(label_config(classes)) == set(classes)
    assert config_choices("not xml") == set()


def ann(label=None, *, when="2026-01-01T00:00:0", n=0, who=7, cancelled=False, result=None):
    return {"id": n, "updated_at": f"{when}{n}", "completed_by": who, "was_cancelled": cancelled,
            "result": result if result is not None else ([] if label is None else
                                                         choice_result(label))}


def test_decide_majority_then_latest_then_skips() -> None:
    users = {7: "ann@lab", 8: "bob@lab"}
    d = decide([ann("L1", n=1), ann("L3", n=2), ann("L3", n=3, who=8)], CLASSES, users)
    assert (d.kind, d.label, d.annotator, d.rule) == ("label", "L3", "bob@lab", "2 of 3 annotations")
    d = decide([ann("L2", n=1), ann("L1", n=2)], CLASSES, users)
    assert (d.label, d.rule) == ("L1", "tie between L1, L2, the latest annotation wins")
    d = decide([ann(cancelled=True, n=1), ann("L2", n=2)], CLASSES, users)
    assert (d.kind, d.label) == ("label", "L2")
    d = decide([ann(cancelled=True, n=1, who={"email": "x@lab"})], CLASSES, users)
    assert (d.kind, d.annotator) == ("skip", "x@lab")
    d = decide([ann("Bogus", n=1), ann(n=2, result=choice_result("L1") + choice_result("L2"))],
               CLASSES, users)
    assert d.kind == "none" and len(d.invalid) == 2
    assert "'Bogus' is not a class (allowed: L1, L2, L3)" in d.invalid[0]
    assert "2 classes chosen" in d.invalid[1]
    d = decide([ann("Bogus", n=1), ann("L2", n=2)], CLASSES, users)
    assert (d.kind, d.label, len(d.invalid)) == ("label", "L2", 1)


def test_api_key_from_env_then_file_and_never_in_a_message(tmp_path: Path, monkeypatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file-0123456789\n")
    ls = LabelStudioConfig(url="http://127.0.0.1:9", api_key_file=str(key_file))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env-0123456789")
    assert read_api_key(ls) == "from-env-0123456789"
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    assert read_api_key(ls) == "from-file-0123456789"
    assert read_api_key(LabelStudioConfig(api_key_file="key"), base=tmp_path) == "from-file-0123456789"
    with pytest.raises(LabelStudioError, match="no Label Studio API key"):
        read_api_key(LabelStudioConfig())
    with pytest.raises(LabelStudioError, match="cannot read the API key file"):
        read_api_key(LabelStudioConfig(api_key_file=str(tmp_path / "nope")))
    from label_studio_sdk.core.api_error import ApiError

    client = LabelStudioClient("http://127.0.0.1:9", "secret-key-0123456789")

    def fails():
        raise ApiError(status_code=500, body={"detail": "token secret-key-0123456789 is bad"})

    with client, pytest.raises(LabelStudioError) as err:
        client._call("testing", fails)
    assert "secret-key" not in str(err.value) and "***" in str(err.value)


def test_labelstudio_config_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "sslall.toml"
    for text, key in (('url = "ftp://x"', "labelstudio.url"), ('images = "s3"', "labelstudio.images"),
                      ("batch_size = 0", "labelstudio.batch_size"), ('project = "ab"',
                                                                      "labelstudio.project")):
        path.write_text(f'classes = ["A", "B"]\n[labelstudio]\n{text}\n')
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key == key
    path.write_text('classes = ["A", "B"]\n[labelstudio]\nurl = "http://127.0.0.1:8080"\n'
                    'project = "42"\n')
    assert load_config(path).labelstudio.project == "42"


# -- a real server ---------------------------------------------------------------------------


def _label_studio_or_fail() -> Path:
    from sslall.labelstudio._server import find_binary

    if os.environ.get("SSLALL_SKIP_LABEL_STUDIO"):
        pytest.skip("SSLALL_SKIP_LABEL_STUDIO is set")
    try:
        return find_binary()
    except NotFoundError as exc:
        pytest.fail(f"{exc} (or set SSLALL_SKIP_LABEL_STUDIO=1 to skip these tests)")


class Server:
    """A server on a data folder (a copy of the session's template) that a test controls."""

    def __init__(self, data_dir: Path, root: Path | None, port: int | None = None) -> None:
        from sslall.labelstudio._server import free_port

        self.data_dir, self.root = data_dir, root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._client: LabelStudioClient | None = None

    @property
    def key_file(self) -> Path:
        return self.data_dir / "api-key"

    @property
    def key(self) -> str:
        return self.key_file.read_text().strip()

    def start(self, timeout: float = 300) -> Server:
        from sslall.labelstudio._server import start, wait_healthy

        self.proc = start(self.data_dir, self.port, document_root=self.root)
        wait_healthy(self.url, self.proc, timeout=timeout, log=self.data_dir / "server.log")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def client(self) -> LabelStudioClient:
        return LabelStudioClient(self.url, self.key)

    @property
    def sdk(self):
        """An SDK client for acting as an annotator (closed when the server stops)."""
        if self._client is None:
            self._client = self.client()
        return self._client.sdk


@pytest.fixture(scope="session")
def ls_template(tmp_path_factory) -> Path:
    """A migrated data folder with a first user and an API key, made once per session."""
    _label_studio_or_fail()
    server = Server(tmp_path_factory.mktemp("ls-template"), None)
    try:
        server.start(timeout=900)
    finally:
        server.stop()
    (server.data_dir / "server.log").unlink(missing_ok=True)
    return server.data_dir


def copy_server(template: Path, dest: Path, root: Path | None) -> Server:
    shutil.copytree(template, dest)
    return Server(dest, root)


@pytest.fixture(scope="module")
def ls(ls_template: Path, tmp_path_factory):
    """The shared server; its document root is the session's temporary folder, so every
    test's files are under it."""
    base = tmp_path_factory.getbasetemp()
    server = copy_server(ls_template, base / "ls-shared", base).start()
    yield server
    server.stop()


def review_ws(tmp_path: Path, server: Server, n: int = 6, **ls_keys) -> tuple[Path, list[str]]:
    """A workspace whose `n` cells wait in review with a model guess (no round needed)."""
    settings = {"url": server.url, "project": f"p {tmp_path.name}"[:50],
                "document_root": str(server.root or ""), "api_key_file": str(server.key_file),
                "batch_size": 100, **ls_keys}
    ws = create_workspace(tmp_path / "ws", Config(classes=CLASSES,
                                                  labelstudio=LabelStudioConfig(**settings)))
    new = []
    for i in range(n):
        path = write_image(tmp_path / "cells" / f"c{i}.png", 5000 + i, size=20)
        new.append(NewSample(sha256_file(path), str(path), "unlabeled"))
    with PoolStore(ws.db_path) as store:
        store.add_samples(new)
        store.apply_moves([Move(s.id, "review", from_pool="unlabeled", prediction=CLASSES[i % 3],
                                confidence=0.4 + 0.05 * i) for i, s in enumerate(new)], round_no=1)
    return ws.root, [s.id for s in new]


def server_tasks(server: Server, ws: Path) -> list[tuple[int, dict]]:
    config = load_config(ws / "sslall.toml")
    with server.client() as client:
        found = client.find_project(config.labelstudio.project)
        return [] if found is None else [(t, d) for t, d, _ in client.tasks(found[0],
                                                                              annotated=False)]


def task_ids(server: Server, ws: Path) -> dict[str, int]:
    tasks = server_tasks(server, ws)
    keys = [records.task_key(d) for _, d in tasks]
    assert len(keys) == len(set(keys)), "a sample has two tasks"
    return {d["sample_id"]: t for t, d in tasks}


def pools(ws: Path) -> dict[str, int]:
    with PoolStore(ws / "pools" / "pools.db") as store:
        return store.pool_sizes()


def assert_store_ok(ws: Path) -> None:
    from sslall.store._integrity import check_store

    with PoolStore(ws / "pools" / "pools.db") as store:
        assert check_store(store, CLASSES, files=False) == []


def test_push_pull_round_trip_with_every_annotation_rule(ls: Server, tmp_path: Path, runner,
                                                         ) -> None:
    ws, ids = review_ws(tmp_path, ls)
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


def test_every_failure_is_one_line_and_never_shows_the_key(ls: Server, tmp_path: Path, runner,
                                                           monkeypatch) -> None:
    from sslall.labelstudio._server import free_port

    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    ws, _ = review_ws(tmp_path, ls, n=1)
    config = ws / "sslall.toml"
    text = config.read_text()
    wrong = tmp_path / "wrong-key"
    wrong.write_text("0123456789abcdef-not-the-key\n")
    not_ls = _not_label_studio()
    cases = [
        ({"url": f"http://127.0.0.1:{free_port()}"}, "push", 5, "cannot reach Label Studio"),
        ({"url": not_ls}, "push", 5, "does not look like a Label Studio server"),
        ({"api_key_file": str(wrong)}, "push", 5, "refused the API key (HTTP 401)"),
        ({"api_key_file": ""}, "push", 5, "no Label Studio API key"),
        ({"project": "987654"}, "push", 5, "project 987654 does not exist"),
        ({"project": "never pushed"}, "pull", 5, "no Label Studio project titled 'never pushed'"),
        ({"url": ""}, "status", 2, "Label Studio is not configured"),
    ]
    for change, command, code, message in cases:
        edited = text
        for key, value in change.items():
            old = next(line for line in text.splitlines() if line.startswith(f"{key} ="))
            edited = edited.replace(old, f'{key} = "{value}"')
        config.write_text(edited)
        result = invoke(runner, "label", command, "-w", ws)
        assert result.exit_code == code, (change, result.stderr)
        assert message in result.stderr, (change, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert "not-the-key" not in result.stderr + result.stdout
    config.write_text(text)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls.key)
    for command in ("push", "status", "pull"):
        result = invoke(runner, "label", command, "-w", ws, "--json")
        assert result.exit_code == 0 and ls.key not in result.stdout + result.stderr
    log = (ws / "logs" / "sslall.log").read_text()
    assert ls.key not in log and "not-the-key" not in log


def test_inside_a_round_a_dead_server_or_bad_key_is_one_warning_line(ls: Server, tmp_path: Path
                                                                    ) -> None:
    from dataclasses import replace

    from sslall.labelstudio._pull import pull_if_configured
    from sslall.labelstudio._push import push_if_configured
    from sslall.labelstudio._server import free_port
    from sslall.workspace import Workspace

    root, _ = review_ws(tmp_path, ls, n=3)
    ws = Workspace(root)
    config = ws.config()
    wrong = tmp_path / "wrong-key"
    wrong.write_text("0123456789abcdef-not-the-key\n")
    dead = replace(config.labelstudio, url=f"http://127.0.0.1:{free_port()}")
    refused = replace(config.labelstudio, api_key_file=str(wrong))
    with PoolStore(ws.db_path) as store:
        for ls_config, problem in ((dead, "cannot reach"), (refused, "refused the API key")):
            broken = replace(config, labelstudio=ls_config)
            pulled = pull_if_configured(ws, broken, store)
            pushed = push_if_configured(ws, broken, store)
            assert pulled.error.startswith("Label Studio pull skipped: ") and problem in pulled.error
            assert pushed.error.startswith("Label Studio push skipped: ") and problem in pushed.error
            assert "\n" not in pulled.error + pushed.error and "not-the-key" not in pushed.error
        assert store.pool_sizes()["review"] == 3
        # the next push catches up
        assert push_if_configured(ws, config, store).pushed == 3
        assert pull_if_configured(ws, config, store).error is None


def _not_label_studio() -> str:
    """A loopback HTTP server that is not Label Studio (it answers 404 to everything)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _silent_listener() -> tuple[socket.socket, str]:
    """A loopback port that accepts connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_round_completes_when_the_server_hangs_and_catches_up_later(ls: Server, tmp_path: Path,
                                                                    runner) -> None:
    from test_rounds import build_workspace

    ws = build_workspace(tmp_path, runner)
    hung, hung_url = _silent_listener()
    config = ws / "sslall.toml"
    base = config.read_text()
    section = (f'\n[labelstudio]\nproject = "round {tmp_path.name}"\napi_key_file = '
               f'"{ls.key_file}"\ndocument_root = "{ls.root}"\n')
    config.write_text(base + section + f'url = "{hung_url}"\ntimeout = 1\n')
    try:
        result = invoke(runner, "round", "-w", ws)
    finally:
        hung.close()
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert "pull skipped" in warnings[0] and "push skipped" in warnings[1]
    assert all("did not answer within 1 s" in w for w in warnings)
    assert pools(ws)["review"] == 4

    config.write_text(base + section + f'url = "{ls.url}"\n')
    assert json.loads(invoke(runner, "label", "push", "-w", ws, "--json").stdout)["pushed"] == 4
    tasks = task_ids(ls, ws)
    first, second = list(tasks.values())[:2]
    sdk = ls.sdk
    with PoolStore(ws / "pools" / "pools.db") as store:
        truth = Path(store.get(next(iter(tasks))).path).parent.name
    sdk.annotations.create(id=first, result=choice_result(truth))
    sdk.annotations.create(id=second, result=[], was_cancelled=True)
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    assert summary["warnings"] == []
    pull, push = summary["labelstudio"]["pull"], summary["labelstudio"]["push"]
    assert (pull["labeled"], pull["skipped"]) == (1, 1)
    assert push["pushed"] == pools(ws)["review"] - 2       # the two unanswered were pushed before
    task_ids(ls, ws)                                        # one task per (sample, visit)
    assert len(server_tasks(ls, ws)) == 4 + push["pushed"]
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


def test_review_images_outside_the_document_root_are_refused(ls: Server, tmp_path: Path,
                                                             runner) -> None:
    import tempfile

    ws, _ = review_ws(tmp_path, ls, n=1)
    outside = Path(tempfile.mkdtemp(prefix="sslall-outside-"))
    try:
        path = write_image(outside / "sub" / "x.png", 4321, size=20)
        with PoolStore(ws / "pools" / "pools.db") as store:
            store.add_samples([NewSample(sha256_file(path), str(path), "unlabeled")])
            store.apply_moves([Move(sha256_file(path), "review", from_pool="unlabeled",
                                    prediction="L1", confidence=0.5)], round_no=1)
        result = invoke(runner, "label", "push", "-w", ws)
        assert result.exit_code == 2
        assert "not inside a sub-folder of labelstudio.document_root" in result.stderr
        assert server_tasks(ls, ws) == []
    finally:
        shutil.rmtree(outside)


def test_no_process_has_the_api_key_in_its_arguments(ls: Server) -> None:
    """The server was started by `labelstudio_server.start`: the key went through its
    environment; no command line on this machine (which any user may read) holds it."""
    key = ls.key.encode()
    assert key in Path(f"/proc/{ls.proc.pid}/environ").read_bytes()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert key not in cmdline.read_bytes(), cmdline
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue


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


def test_an_annotator_sees_the_cell_in_chromium(ls: Server, tmp_path: Path, runner) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ws, ids = review_ws(tmp_path, ls, n=1)
    ckpt = make_checkpoint(tmp_path / "ckpt", "baseline-cnn", 32)
    assert invoke(runner, "label", "push", "--with-cam", "--checkpoint", ckpt, "-w", ws
                  ).exit_code == 0
    task = task_ids(ls, ws)[ids[0]]
    project = json.loads(invoke(runner, "label", "status", "-w", ws, "--json").stdout)["project_id"]
    creds = json.loads((ls.data_dir / "sslall-credentials.json").read_text())
    browser = headless_chromium()
    try:
        browser.get(f"{ls.url}/user/login/")
        browser.find_element(By.NAME, "email").send_keys(creds["username"])
        browser.find_element(By.NAME, "password").send_keys(creds["password"])
        browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        WebDriverWait(browser, 120).until(lambda b: "/user/login" not in b.current_url)
        browser.get(f"{ls.url}/projects/{project}/data?task={task}")
        # the data manager's thumbnail comes from our URL; the labelling view draws the same
        # bytes (through a blob: URL) large: both decoded, at the cell's 20 px; and the
        # Grad-CAM overlay (448 px wide: the 224 px input beside its heat map) under it
        name = f"{tmp_path.name}/cells/c0.png"
        script = ("return Array.from(document.querySelectorAll('img')).map(i => ["
                  "decodeURIComponent(i.src).includes(arguments[0]), i.naturalWidth, "
                  "i.getBoundingClientRect().width])")

        def shown(b) -> bool:
            imgs = b.execute_script(script, name)
            return (any(ours and w == 20 for ours, w, _ in imgs)
                    and any(w == 20 and width > 100 for _, w, width in imgs)
                    and any(w == 448 and width > 100 for _, w, width in imgs))

        WebDriverWait(browser, 120).until(shown)
        assert "round-1" in browser.find_element(By.TAG_NAME, "body").text
    except Exception:
        browser.save_screenshot(str(tmp_path / "page.png"))
        print(browser.current_url, browser.execute_script(
            "return Array.from(document.querySelectorAll('img')).map(i => [i.src, i.naturalWidth,"
            " i.getBoundingClientRect().width])"))
        raise
    finally:
        browser.quit()


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
