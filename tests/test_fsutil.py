"""No reader blocks on a fifo: `open_regular` refuses what is not a regular file at once, and
every command that reads a file the user can swap (`check`, `round`, `label status`) says so in
one line instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import sslall
from test_reliability import one_error_line
from test_rounds import build_workspace, copy_ws
from typer.testing import CliRunner

from sslall._fsutil import NotRegularFile, open_regular, sha256_file
from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("fsutil"), CliRunner())


def _within(seconds: float, call, *args, **kwargs):
    """Run `call` in a thread; fail if it has not returned in `seconds` (it would hang)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = call(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call.__name__} blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_open_regular_refuses_fifos_directories_and_links_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for call, arg in ((sha256_file, fifo), (open_regular, fifo), (open_regular, tmp_path)):
        with pytest.raises(NotRegularFile) as info:
            _within(5, call, arg)
        assert "not a file" in info.value.strerror
    target = tmp_path / "outside.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(NotRegularFile, match="symbolic link"):
        open_regular(link, "a", follow_symlinks=False, create=True)
    with open_regular(link) as handle:  # readers may follow links unless told otherwise
        assert handle.read() == b"keep"
    assert target.read_text() == "keep"
    with open_regular(tmp_path / "new.log", "a", create=True, encoding="utf-8") as handle:
        handle.write("line\n")  # and what it opens is blocking, ordinary file I/O
    assert (tmp_path / "new.log").read_text() == "line\n"


def _fifo_in_place_of_an_image(ws: Path) -> str:
    with PoolStore(ws / "pools" / "pools.db") as store:
        victim = next(store.samples("unlabeled"))
    Path(victim.path).unlink()
    os.mkfifo(victim.path)
    return victim.id


def test_check_and_round_never_block_on_a_fifo_where_an_image_was(template: Path,
                                                                   tmp_path: Path) -> None:
    ws = copy_ws(template, tmp_path)
    victim = _fifo_in_place_of_an_image(ws)
    check = sslall("check", "-w", ws)  # conftest's timeout would fail a hang (600 s)
    assert check.returncode == 4, check.stderr
    assert "unreadable-file" in check.stdout + check.stderr
    assert "not a file" in check.stdout + check.stderr
    started = time.monotonic()
    round_ = sslall("--quiet", "round", "-w", ws)
    assert round_.returncode == 0, round_.stderr
    assert time.monotonic() - started < 300
    with PoolStore(ws / "pools" / "pools.db") as store:
        row = store.get(victim)
    assert row.pool == "quarantine" and row.reason.startswith("changed-file: the file is a fifo")
    assert sslall("check", "-w", ws).returncode == 0


def test_label_status_never_blocks_on_a_fifo_api_key_file(template: Path, tmp_path: Path) -> None:
    ws = copy_ws(template, tmp_path)
    os.mkfifo(ws / "key")
    with (ws / "sslall.toml").open("a") as handle:
        handle.write('\n[labelstudio]\nurl = "http://127.0.0.1:9"\napi_key_file = "key"\n')
    env = {k: v for k, v in os.environ.items() if k != "LABEL_STUDIO_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "sslall", "label", "status", "-w", ws],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 5, result.stderr
    assert "not a file" in one_error_line(result)
