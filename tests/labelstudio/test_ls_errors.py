"""A dead, hung, foreign or key-refusing server: one line (a warning inside a round), never the
key, and the next push catches up.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from conftest import Server, invoke
from ls_review import assert_store_ok, pools, review_ws, server_tasks, task_ids

from sslall.labelstudio._client import choice_result
from sslall.store._pools import PoolStore

pytestmark = pytest.mark.labelstudio


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
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")
                and "the holdout has fewer" not in line]  # 5 holdout cells a class: warned too
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
    assert [w for w in summary["warnings"] if "the holdout has fewer" not in w] == []
    pull, push = summary["labelstudio"]["pull"], summary["labelstudio"]["push"]
    assert (pull["labeled"], pull["skipped"]) == (1, 1)
    assert push["pushed"] == pools(ws)["review"] - 2       # the two unanswered were pushed before
    task_ids(ls, ws)                                        # one task per (sample, visit)
    assert len(server_tasks(ls, ws)) == 4 + push["pushed"]
    assert_store_ok(ws)
