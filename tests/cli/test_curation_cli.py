"""`sslall sample`, `sslall quarantine` and `sslall conflicts` through the real CLI: exit codes,
--json, one-line errors, `check` whole after each change, events with reason and actor, and the
label conflict `add` reports resolved end to end."""

import json
import shutil
from pathlib import Path

from conftest import invoke, make_class_tree, sslall
from test_bad_input import one_error_line

from sslall._fsutil import sha256_file
from sslall.store._pools import PoolStore
from sslall.store._records import Move
from sslall.workspace import find_workspace, round_lock


def _db(ws: Path) -> Path:
    return ws / "pools" / "pools.db"


def _ok(runner, *args):
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.stderr
    return result


def _checked(runner, ws: Path) -> None:
    _ok(runner, "check", "-w", ws)


def test_a_conflict_from_add_is_resolved_end_to_end(workspace: Path, tmp_path: Path,
                                                     runner) -> None:
    src = make_class_tree(tmp_path / "cells", per_class=1)
    _ok(runner, "add", "labeled", src, "-w", workspace)
    (tmp_path / "second" / "L2").mkdir(parents=True)
    shutil.copy(src / "L1" / "L1_0.png", tmp_path / "second" / "L2" / "cell.png")
    added = _ok(runner, "add", "labeled", tmp_path / "second", "-w", workspace)
    assert "kept 'L1', resolve by hand" in added.stdout
    listed = json.loads(_ok(runner, "conflicts", "-w", workspace, "--json").stdout)["conflicts"]
    assert [(c["label"], c["existing_label"]) for c in listed] == [("L2", "L1")]
    assert listed[0]["path"] == str(tmp_path / "second" / "L2" / "cell.png")
    fixed = _ok(runner, "sample", "set-label", listed[0]["sample_id"][:10], "L2", "--reason",
                "second read by Dr. K", "--by", "kim", "-w", workspace, "--json")
    change = json.loads(fixed.stdout)
    assert (change["old_label"], change["label"], change["conflicts_resolved"]) == ("L1", "L2", 1)
    assert "no open label conflicts" in _ok(runner, "conflicts", "-w", workspace).stdout
    resolved = json.loads(_ok(runner, "conflicts", "--all", "-w", workspace, "--json").stdout)
    assert all("second read by Dr. K" in c["resolution"] for c in resolved["conflicts"])
    again = _ok(runner, "add", "labeled", src, "-w", workspace)
    assert "conflict" not in again.stdout
    _checked(runner, workspace)
    shown = json.loads(_ok(runner, "sample", "show", src / "L1" / "L1_0.png", "-w", workspace,
                           "--json").stdout)
    assert shown["sample"]["label"] == "L2" and shown["sample"]["label_source"] == "hand"
    last = shown["events"][-1]
    assert last["actor"] == "hand:kim" and "second read by Dr. K" in last["reason"]


def test_set_label_mistakes_are_one_line(workspace: Path, tmp_path: Path, runner) -> None:
    src = make_class_tree(tmp_path / "cells", per_class=1)
    _ok(runner, "add", "labeled", src, "-w", workspace)
    cell = src / "L1" / "L1_0.png"
    bad = sslall("sample", "set-label", cell, "L9", "--reason", "x", "-w", workspace)
    assert bad.returncode == 2 and "'L9' is not a class (allowed: L1, L2, L3)" in one_error_line(bad)
    no_reason = sslall("sample", "set-label", cell, "L2", "-w", workspace)
    assert no_reason.returncode == 2 and "--reason" in one_error_line(no_reason)
    unknown = sslall("sample", "set-label", "deadbeef", "L2", "--reason", "x", "-w", workspace)
    assert unknown.returncode == 3 and "no sample" in one_error_line(unknown)
    _checked(runner, workspace)


def test_remove_by_path_keeps_the_log_and_check_passes(workspace: Path, tmp_path: Path,
                                                       runner) -> None:
    src = make_class_tree(tmp_path / "cells", per_class=2)
    _ok(runner, "add", "labeled", src, "-w", workspace)
    cell = src / "L3" / "L3_1.png"
    sid = sha256_file(cell)
    no_reason = sslall("sample", "remove", cell, "-w", workspace)
    assert no_reason.returncode == 2 and "--reason is required" in one_error_line(no_reason)
    out = _ok(runner, "sample", "remove", cell, "--reason", "not a blood cell", "--by", "kim",
              "-w", workspace, "--json")
    assert json.loads(out.stdout)["removed"] == [
        {"sample_id": sid, "path": str(cell), "pool": "labeled", "label": "L3"}]
    _checked(runner, workspace)
    status = json.loads(_ok(runner, "status", "-w", workspace, "--json").stdout)
    assert status["pools"]["labeled"] == 5
    shown = json.loads(_ok(runner, "sample", "show", sid[:12], "-w", workspace, "--json").stdout)
    assert shown["removed"] is True
    assert (shown["events"][-1]["to_pool"], shown["events"][-1]["actor"]) == ("removed",
                                                                               "hand:kim")
    assert "not a blood cell" in shown["events"][-1]["reason"]


def test_quarantine_list_release_and_remove(workspace: Path, tmp_path: Path, runner) -> None:
    src = make_class_tree(tmp_path / "cells", per_class=1)
    (src / "L1" / "broken.png").write_bytes(b"not an image")
    _ok(runner, "add", "labeled", src, "-w", workspace)
    moved = src / "L2" / "L2_0.png"
    saved = moved.read_bytes()
    moved.unlink()
    with PoolStore(_db(workspace)) as store:  # what a round's file check does to a missing file
        sid = next(s.id for s in store.samples("labeled") if s.path == str(moved))
        store.apply_moves([Move(sid, "quarantine", from_pool="labeled",
                                reason="missing-file: No such file or directory")], round_no=0)
    listed = json.loads(_ok(runner, "quarantine", "list", "-w", workspace, "--json").stdout)
    by_path = {q["path"]: q for q in listed["quarantined"]}
    assert by_path[str(moved)]["from_pool"] == "labeled"
    assert by_path[str(src / "L1" / "broken.png")]["from_pool"] is None
    assert "undecodable" in by_path[str(src / "L1" / "broken.png")]["reason"]
    refused = sslall("quarantine", "release", moved, "-w", workspace)
    assert refused.returncode == 2 and "is missing" in refused.stderr
    moved.write_bytes(saved)
    out = json.loads(_ok(runner, "quarantine", "release", "--all", "-w", workspace,
                         "--json").stdout)
    assert out["released"] == [{"sample_id": sid, "path": str(moved), "pool": "labeled"}]
    assert "sslall add" in out["refused"][0]["reason"]
    _checked(runner, workspace)
    gone = json.loads(_ok(runner, "sample", "remove", "--quarantined", "--reason", "corrupt scan",
                          "-w", workspace, "--json").stdout)["removed"]
    assert [r["path"] for r in gone] == [str(src / "L1" / "broken.png")]
    assert "nothing is quarantined" in _ok(runner, "quarantine", "list", "-w", workspace).stdout
    _checked(runner, workspace)
    nothing = sslall("quarantine", "release", "-w", workspace)
    assert nothing.returncode == 2 and "--all" in one_error_line(nothing)


def test_writes_take_the_workspace_lock_and_listings_do_not(workspace: Path, tmp_path: Path,
                                                            runner) -> None:
    src = make_class_tree(tmp_path / "cells", per_class=1)
    _ok(runner, "add", "labeled", src, "-w", workspace)
    cell = src / "L1" / "L1_0.png"
    with round_lock(find_workspace(workspace), "sslall round"):
        for args in (("conflicts",), ("quarantine", "list"), ("sample", "show", cell)):
            result = sslall(*args, "-w", workspace, "--json")
            assert result.returncode == 0, result.stderr
            json.loads(result.stdout)
        for args in (("sample", "set-label", cell, "L2", "--reason", "x"),
                     ("sample", "remove", cell, "--reason", "x"),
                     ("quarantine", "release", "--all")):
            result = sslall(*args, "-w", workspace)
            assert result.returncode == 75 and "already running" in one_error_line(result)
    with PoolStore(_db(workspace)) as store:
        assert store.get(sha256_file(cell)).label == "L1"
