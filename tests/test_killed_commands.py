"""SIGKILL in the middle of `sslall review import` and `sslall run`: every pool stays as the last
commit left it, `check` passes, no lock or partial folder is left, and the same command then
completes. (`round`: tests/test_rounds.py; `add`: tests/cli/test_cli.py and
tests/store/test_import_workers.py; `label push`/`pull`: tests/labelstudio/test_ls_crashes.py.)
"""

import csv
import json
import os
import signal
import time
from pathlib import Path

from conftest import invoke, paused, sslall
from test_rounds import build_workspace, pools_of, sample_rows

from sslall.store._pools import PoolStore


def _answered_review_csv(ws: Path, runner, tmp_path: Path) -> Path:
    """The review queue exported and every row labelled with its synthetic truth (its folder)."""
    queue = tmp_path / "queue.csv"
    assert invoke(runner, "review", "export", "--csv", queue, "-w", ws).exit_code == 0
    with queue.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "the round sent nothing to review"
    for row in rows:
        row["label"] = Path(row["path"]).parent.name
    with queue.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return queue


def test_review_import_killed_before_its_commit_changes_nothing(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)
    assert invoke(runner, "round", "-w", ws, "--budget", "5").exit_code == 0
    queue = _answered_review_csv(ws, runner, tmp_path)
    before, rows = pools_of(ws), sample_rows(ws)
    proc = paused(["review", "import", "--csv", queue, "-w", ws], "review-import", tmp_path / "paused")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert pools_of(ws) == before and sample_rows(ws) == rows
    assert sslall("check", "-w", ws).returncode == 0
    again = sslall("review", "import", "--csv", queue, "-w", ws)
    assert again.returncode == 0, again.stderr
    after = pools_of(ws)
    assert after.get("review", 0) == 0
    assert after["labeled"] == before["labeled"] + before["review"]
    assert sslall("check", "-w", ws).returncode == 0


def test_run_killed_in_its_second_round_keeps_the_first(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)
    marker = tmp_path / "paused"
    proc = paused(["run", "-w", ws, "--rounds", "3"], "train", marker)
    marker.unlink()  # round 1 goes on; the marker comes back when round 2 reaches "train"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"run never reached round 2's train step: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    with PoolStore(ws / "pools" / "pools.db") as store:
        assert store.last_round() == 1
    first = json.loads((ws / "runs" / "round-0001" / "metrics.json").read_text())
    assert {k: v for k, v in pools_of(ws).items() if v} == {k: v for k, v in first["pools"].items() if v}
    assert not (ws / "runs" / "round-0002").exists()
    assert sslall("check", "-w", ws).returncode == 0
    again = sslall("round", "-w", ws)  # the lock is free and the partial folder goes
    assert again.returncode == 0, again.stderr
    assert (ws / "runs" / "round-0002" / "model.safetensors").is_file()
    assert list((ws / "runs").glob(".partial-round-*")) == []
    assert sslall("check", "-w", ws).returncode == 0
