"""Nothing is written outside a workspace through a symbolic link (the lock, the log, the
store), and a killed round's partial folder does not outlive the next round."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import sslall, write_image
from test_reliability import one_error_line
from test_rounds import build_workspace, copy_ws
from typer.testing import CliRunner

from sslall.workspace import Workspace


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("workspace"), CliRunner())


@pytest.mark.parametrize("name", [".lock", "logs/sslall.log", "pools/pools.db", "logs"])
def test_a_link_inside_the_workspace_is_refused_and_its_target_untouched(
        workspace: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "precious.txt"
    target.write_text("do not touch\n")
    inside = workspace / name
    if inside.is_dir():
        os.rename(inside, outside / "moved")
        target = outside / "moved"
    else:
        inside.parent.mkdir(parents=True, exist_ok=True)
        if inside.exists():
            os.rename(inside, outside / "precious.txt")
            target = outside / "precious.txt"
    inside.symlink_to(target)
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    images = tmp_path / "imgs"
    write_image(images / "a.png", 1, size=16)
    for args in (("add", "unlabeled", images), ("status",), ("round",)):
        result = sslall(*args, "-w", workspace)
        assert result.returncode == 2, (args, result.stderr)
        assert "symbolic link" in one_error_line(result)
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before


def test_the_lock_opens_without_following_a_link_even_when_it_appears_late(
        workspace: Path, tmp_path: Path) -> None:
    from sslall.errors import UsageError
    from sslall.workspace import round_lock

    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    ws = Workspace(workspace)
    ws.lock_path.unlink(missing_ok=True)
    ws.lock_path.symlink_to(target)  # after find_workspace's check: O_NOFOLLOW still refuses
    with pytest.raises(UsageError, match="symbolic link"), round_lock(ws):
        pass
    assert target.read_text() == "do not touch\n"
    ws.lock_path.unlink()
    os.mkfifo(ws.lock_path)  # a fifo as the lock: refused, not blocked on
    with pytest.raises(UsageError, match="not a regular file"), round_lock(ws):
        pass


def test_a_killed_rounds_partial_folder_is_removed_by_the_next_round(template: Path,
                                                                      tmp_path: Path) -> None:
    ws = copy_ws(template, tmp_path)
    other_pid = 999_999  # not this process: the name a killed `run --rounds N` leaves
    stale = [ws / "runs" / f".partial-round-0001-{other_pid}",
             ws / "runs" / f".partial-round-0007-{other_pid + 1}"]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    result = sslall("round", "-w", ws, "--json")
    assert result.returncode == 0, result.stderr
    assert not [p for p in stale if os.path.lexists(p)]
    assert Workspace(ws).partial_round_dirs() == []
    assert (ws / "runs" / "round-0001" / "metrics.json").is_file()
    assert json.loads((ws / "runs" / "round-0001" / "metrics.json").read_text())["round"] == 1
