"""Damaged things sslall reads, through the CLI: a pool store that is not a sound database, a
checkpoint whose model.json holds absurd values, and a server that is not Label Studio but
answers 200 to everything. Each is one line (no traceback, never "unexpected") and its exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import CLASSES, invoke, make_checkpoint, make_class_tree
from test_bad_input import one_error_line


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("bad-store")
    ws = root / "ws"
    runner = CliRunner()
    assert invoke(runner, "init", ws, "--classes", ",".join(CLASSES), "--backbone",
                  "baseline-cnn", "--image-size", "32").exit_code == 0
    make_class_tree(root / "cells", per_class=2)
    assert invoke(runner, "add", "labeled", root / "cells", "-w", ws, "--workers",
                  "1").exit_code == 0
    return ws


# -- the pool store ---------------------------------------------------------------------------


def truncated(data: bytes) -> bytes:
    return data[:len(data) // 3]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": truncated,
    "random-bytes": lambda data: os.urandom(len(data)),
    "zero-bytes": lambda data: b"",
    "header-only": lambda data: data[:100],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("command", ["status", "check", "add", "review-export"])
def test_a_damaged_store_is_exit_4_the_store_is_damaged(ws: Path, runner, tmp_path: Path,
                                                        damage: str, command: str) -> None:
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    db = copy / "pools" / "pools.db"
    for extra in ("pools.db-wal", "pools.db-shm"):
        (copy / "pools" / extra).unlink(missing_ok=True)
    db.write_bytes(DAMAGE[damage](db.read_bytes()))
    args = {"status": ["status"], "check": ["check"],
            "add": ["add", "unlabeled", ws.parent / "cells" / CLASSES[0], "--workers", "1"],
            "review-export": ["review", "export", "--csv", tmp_path / "q.csv"]}[command]
    result = invoke(runner, "--quiet", *args, "-w", copy)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert "the store is damaged" in line and "unexpected" not in line, line


# -- a checkpoint's model.json -------------------------------------------------------------------

SIDECAR: dict[str, tuple[dict, str]] = {
    "image-size-60000": ({"image_size": 60000}, "image_size 60000 is not a whole number"),
    "image-size-negative": ({"image_size": -32}, "image_size -32"),
    "image-size-a-string": ({"image_size": "32"}, "image_size '32'"),
    "image-size-true": ({"image_size": True}, "image_size True"),
    "temperature-nan": ({"temperature": float("nan")}, "temperature nan"),
    "temperature-zero": ({"temperature": 0}, "temperature 0 is not a positive number"),
    "mean-two-values": ({"mean": [0.5, 0.5]}, "mean [0.5, 0.5] is not a list of 3 numbers"),
    "std-zero": ({"std": [0.2, 0.0, 0.2]}, "has a value that is not positive"),
    "classes-a-string": ({"classes": "L1,L2,L3"}, "classes 'L1,L2,L3' is not a list"),
    "classes-one": ({"classes": ["L1"]}, "needs at least 2 classes"),
    "round-negative": ({"round": -1}, "round -1 is not a round number"),
    "backbone-a-number": ({"backbone": 7}, "backbone 7 is not a name"),
    "turned-view-a-word": ({"turned_view": "yes"}, "turned_view 'yes' is not true or false"),
    "max-pixels-zero": ({"max_pixels": 0}, "max_pixels 0"),
    "preprocess-unknown-key": ({"preprocess": {"sharpen": True}},
                               "'preprocess.sharpen': unknown key"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "good", "baseline-cnn", 32)


@pytest.mark.parametrize("name", list(SIDECAR))
def test_an_absurd_model_json_is_refused_in_one_line(ws: Path, runner, checkpoint: Path,
                                                     tmp_path: Path, name: str) -> None:
    change, needle = SIDECAR[name]
    bad = tmp_path / "ckpt"
    shutil.copytree(checkpoint, bad)
    meta = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**meta, **change}))
    cell = next((ws.parent / "cells").rglob("*.png"))
    result = invoke(runner, "predict", cell, "--checkpoint", bad, "-w", ws)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert needle in line and "it was not written by sslall or was edited" in line, line


def test_the_sound_checkpoint_predicts(ws: Path, runner, checkpoint: Path) -> None:
    cell = next((ws.parent / "cells").rglob("*.png"))
    result = invoke(runner, "predict", cell, "--checkpoint", checkpoint, "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["class"] in CLASSES


# -- a server that is not Label Studio ---------------------------------------------------------

ANSWERS = {"empty-object": b"{}", "empty-list": b"[]", "html": b"<html>hello</html>",
           "null": b"null"}


@pytest.fixture(scope="module")
def impostor() -> Iterator[dict]:
    """A loopback HTTP server answering 200 and the current `body` to every request."""
    state = {"body": b"{}"}

    class Answer(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state["body"])))
            self.end_headers()
            self.wfile.write(state["body"])

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("answer", list(ANSWERS))
@pytest.mark.parametrize("command", ["push", "pull", "status"])
def test_a_server_that_is_not_label_studio_is_exit_5(ws: Path, runner, impostor: dict,
                                                     monkeypatch, answer: str,
                                                     command: str) -> None:
    impostor["body"] = ANSWERS[answer]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0123456789abcdef")
    toml = (ws / "sslall.toml").read_text()
    edited = []
    for line in toml.splitlines():
        if line.startswith("url ="):
            line = f'url = "{impostor["url"]}"'
        elif line.startswith("project ="):
            line = 'project = "5"'
        elif line.startswith("images ="):
            line = 'images = "upload"'
        edited.append(line)
    (ws / "sslall.toml").write_text("\n".join(edited) + "\n")
    try:
        result = invoke(runner, "--quiet", "label", command, "-w", ws)
    finally:
        (ws / "sslall.toml").write_text(toml)
    assert result.exit_code == 5, (result.stdout, result.stderr)
    line = one_error_line(result)
    assert "does not look like a Label Studio server" in line, line
    assert "0123456789abcdef" not in line
