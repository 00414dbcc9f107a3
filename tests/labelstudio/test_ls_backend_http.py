"""`sslall serve` without a Label Studio server: the ML backend protocol over real HTTP on a
workspace with one tiny trained round, its refusals, and the command's clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import CLASSES, invoke
from test_rounds import build_workspace
from typer.testing import CliRunner

from sslall.labelstudio._backend import Backend, label_names
from sslall.labelstudio._http import make_server
from sslall.model._inference import Predictor
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace, lock_is_held

CONFIG = ('<View><Image name="cell" value="$picture"/><Choices name="verdict" toName="cell" '
          'choice="single"><Choice value="L1"/><Choice value="L2"/><Choice value="L3"/>'
          '</Choices></View>')


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    runner = CliRunner()
    ws = build_workspace(root, runner)
    text = (ws / "sslall.toml").read_text()
    (ws / "sslall.toml").write_text(text + f'\n[labelstudio]\ndocument_root = "{root}"\n')
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    workspace = Workspace(ws)
    server = make_server(Backend(workspace, workspace.config()), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"ws": ws, "root": root, "url": f"http://127.0.0.1:{server.server_address[1]}"}
    server.shutdown()
    server.server_close()


def call(url: str, body: bytes | dict | None = None, method: str | None = None
         ) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None
                                                                       else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_setup_name_the_round_in_use(lab: dict) -> None:
    start = time.monotonic()
    status, health = call(lab["url"] + "/health")
    assert status == 200 and time.monotonic() - start < 1.0
    assert health == {"status": "UP", "model_class": "sslall", "model_version": "round-1"}
    status, setup = call(lab["url"] + "/setup", {"project": "3.1700000000", "schema": CONFIG})
    assert (status, setup) == (200, {"model_version": "round-1"})


def test_predict_answers_each_task_in_order_with_the_models_class(lab: dict) -> None:
    with PoolStore(lab["ws"] / "pools" / "pools.db", read_only=True) as store:
        cells = list(store.samples("unlabeled"))[:2]
    rel = Path(cells[1].path).relative_to(lab["root"]).as_posix()
    tasks = [{"id": 7, "data": {"picture": "ignored", "sample_id": cells[0].id}},
             {"id": 8, "data": {"picture": f"/data/local-files/?d={rel}"}},
             {"id": 9, "data": {"picture": "/data/local-files/?d=cells%2Fnone.png"}}]
    status, answer = call(lab["url"] + "/predict", {"tasks": tasks, "label_config": CONFIG})
    assert status == 200 and len(answer["results"]) == 3
    expected = Predictor(lab["ws"] / "runs" / "round-0001").predict([c.path for c in cells])
    for got, want in zip(answer["results"][:2], expected, strict=True):
        k = int(want.probs.argmax())
        assert got["result"] == [{"from_name": "verdict", "to_name": "cell", "type": "choices",
                                  "value": {"choices": [CLASSES[k]]}}]
        assert got["score"] == pytest.approx(float(want.probs[k]), abs=1e-6)
        assert got["model_version"] == "round-1"
    assert answer["results"][2]["result"] == [] and "none.png" in answer["results"][2]["error"]


@pytest.mark.parametrize("image", ["/data/local-files/?d=../../etc/passwd",
                                   "/data/local-files/?d=%2Fetc%2Fpasswd",
                                   "http://example.org/cell.png", "/data/upload/1/x.png"])
def test_paths_outside_the_document_root_and_urls_are_refused(lab: dict, image: str) -> None:
    status, answer = call(lab["url"] + "/predict",
                          {"tasks": [{"id": 1, "data": {"image": image}}]})
    assert status == 400 and "\n" not in answer["error"]
    assert "outside labelstudio.document_root" in answer["error"] or "fetches no URL" in \
        answer["error"]


@pytest.mark.parametrize(("body", "code", "words"), [
    (b"{not json", 400, "not JSON"), (b"[1, 2]", 400, "JSON object"),
    (b'{"tasks": 3}', 400, "predict needs"), (b"\xff\xfe", 400, "not JSON")])
def test_bad_requests_get_one_line_and_the_server_lives_on(lab: dict, body: bytes, code: int,
                                                           words: str) -> None:
    status, answer = call(lab["url"] + "/predict", body)
    assert status == code and words in answer["error"] and "\n" not in answer["error"]
    assert "Traceback" not in answer["error"]
    assert call(lab["url"] + "/nowhere")[0] == 404
    assert call(lab["url"] + "/health")[0] == 200


def test_webhook_events_without_a_server_configured(lab: dict) -> None:
    status, answer = call(lab["url"] + "/webhook", {"action": "ANNOTATION_CREATED"})
    assert status == 200 and answer["pull"].startswith("skipped: labelstudio.url")
    assert call(lab["url"] + "/webhook", {"action": "PROJECT_UPDATED"})[1]["ignored"] is True
    assert call(lab["url"] + "/webhook", {"action": "START_TRAINING"})[1]["round"].startswith(
        "not configured")
    assert call(lab["url"] + "/webhook", {"nothing": 1})[0] == 400


def test_a_newer_round_is_picked_up_without_a_restart(tmp_path: Path, lab: dict) -> None:
    workspace = Workspace(lab["ws"])
    backend = Backend(workspace, workspace.config())
    first, version = backend.predictor()
    assert backend.predictor()[0] is first and version == "round-1"
    meta = workspace.round_dir(1) / "model.json"
    meta.touch()  # a rewritten checkpoint (same round) loads again
    time.sleep(0.01)
    meta.write_text(meta.read_text())
    assert backend.predictor()[0] is not first


def test_label_names_fall_back_to_sslalls_own() -> None:
    assert label_names(CONFIG) == ("verdict", "cell", "picture")
    assert label_names("<View") == ("label", "image", "image")
    assert label_names(None) == ("label", "image", "image")


def test_serve_stops_cleanly_on_sigterm_and_ctrl_c(lab: dict) -> None:
    from sslall.labelstudio._server import free_port

    def ignore_sigint() -> None:  # as a parent with SIGINT ignored would start it
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    for sig, code, before in ((signal.SIGTERM, 0, None), (signal.SIGINT, 130, None),
                              (signal.SIGINT, 130, ignore_sigint)):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "sslall", "serve", "--port", str(port),
                                 "-w", str(lab["ws"])], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=before)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if call(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # never leave the server behind for later tests
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"sslall serve ignored {sig.name} for 30 s; stdout {out!r}, stderr {err!r}")
        assert proc.returncode == code, err
        assert "Traceback" not in err and "round-1" in out
        assert not lock_is_held(Workspace(lab["ws"]))


def test_serve_refuses_a_port_in_use(lab: dict) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "sslall", "serve", "--port",
                                 str(taken.getsockname()[1]), "-w", str(lab["ws"])],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot listen on 127.0.0.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_queued_round_is_skipped_while_the_lock_is_held(lab: dict) -> None:
    from dataclasses import replace

    from sslall.workspace import round_lock

    workspace = Workspace(lab["ws"])
    config = workspace.config()
    backend = Backend(workspace, replace(config, labelstudio=replace(config.labelstudio,
                                                                     round_after=2)))
    assert backend.queue_round() == "waiting: 0 of 2 labels"
    with round_lock(workspace, "a scheduled round"):
        assert backend.queue_round(force=True).startswith("skipped: the workspace lock is held")
    assert backend.round_proc is None


def test_queue_fields_read_the_review_reason() -> None:
    from sslall.labelstudio._refresh import queue_fields

    assert queue_fields("margin 0.04, rank 3 of 120 candidates") == {"sslall_score": 0.04,
                                                                     "sslall_rank": 3}
    assert queue_fields("entropy 1e-05, rank 1 of 4 confident candidates (p=0.9 ...)") == {
        "sslall_score": 1e-05, "sslall_rank": 1}
    assert queue_fields("coreset: pick 2 of 5 among 40 candidates") == {"sslall_rank": 2}
    assert queue_fields("labelled by hand") == {} and queue_fields(None) == {}
