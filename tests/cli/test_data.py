"""`sslall relocate` and `sslall export-data` through the real CLI: exit codes, --json, one-line
errors, `check` whole after a relocation, a round after the image folder moved, add's path
update."""

import json
import shutil
from pathlib import Path

from conftest import invoke, make_class_tree, sslall
from test_bad_input import one_error_line
from test_rounds import build_workspace

from sslall.store._pools import PoolStore


def _added(runner, workspace: Path, tmp_path: Path) -> Path:
    src = make_class_tree(tmp_path / "cells", per_class=2)
    assert invoke(runner, "add", "labeled", src, "-w", workspace).exit_code == 0
    return src


def test_relocate_after_the_folder_moved(workspace: Path, tmp_path: Path, runner) -> None:
    src = _added(runner, workspace, tmp_path)
    shutil.move(src, tmp_path / "moved")
    assert invoke(runner, "check", "-w", workspace).exit_code == 4
    dry = invoke(runner, "relocate", src, tmp_path / "moved", "-w", workspace, "--dry-run")
    assert dry.exit_code == 0 and "would relocate 6 of 6 samples" in dry.stdout
    assert invoke(runner, "check", "-w", workspace).exit_code == 4
    result = invoke(runner, "relocate", src, tmp_path / "moved", "-w", workspace, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["matched"], data["relocated"], data["refused"], data["dry_run"]) == (6, 6, 0,
                                                                                    False)
    assert invoke(runner, "check", "-w", workspace).exit_code == 0
    with PoolStore(workspace / "pools" / "pools.db") as store:
        actors = [e[9] for e in store.events() if e[8].startswith("relocated from")]
    assert actors == ["relocate"] * 6


def test_relocate_mistakes_are_one_line(workspace: Path, tmp_path: Path, runner) -> None:
    src = _added(runner, workspace, tmp_path)
    shutil.copytree(src, tmp_path / "copy")
    (tmp_path / "copy" / "L1" / "L1_0.png").unlink()
    strict = sslall("relocate", src, tmp_path / "copy", "-w", workspace, "--strict")
    line = one_error_line(strict)
    assert strict.returncode == 2 and "1 of 6 files" in line and "nothing changed (--strict)" in line
    nowhere = invoke(runner, "relocate", tmp_path / "nowhere", tmp_path / "copy", "-w", workspace)
    assert nowhere.exit_code == 2 and "no sample's path is under" in nowhere.stderr
    partial = invoke(runner, "relocate", src, tmp_path / "copy", "-w", workspace)
    assert partial.exit_code == 0 and "relocated 5 of 6" in partial.stdout
    assert "1 left unchanged" in partial.stderr and "L1_0.png: missing" in partial.stdout


def test_add_reports_relocated_for_a_moved_folder(workspace: Path, tmp_path: Path,
                                                  runner) -> None:
    src = _added(runner, workspace, tmp_path)
    shutil.move(src, tmp_path / "moved")
    result = invoke(runner, "add", "labeled", tmp_path / "moved", "-w", workspace, "--json")
    data = json.loads(result.stdout)
    assert len(data["relocated"]) == 6 and data["duplicates"] == [] and data["added"] == {}
    assert invoke(runner, "check", "-w", workspace).exit_code == 0


def test_a_round_after_the_images_moved_and_relocate(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)
    shutil.move(tmp_path / "cells", tmp_path / "elsewhere")
    result = invoke(runner, "relocate", tmp_path / "cells", tmp_path / "elsewhere", "-w", ws)
    assert result.exit_code == 0 and "relocated 72 of 72" in result.stdout
    assert invoke(runner, "round", "-w", ws, "--json").exit_code == 0
    with PoolStore(ws / "pools" / "pools.db") as store:
        assert store.pool_sizes()["quarantine"] == 0
    assert invoke(runner, "check", "-w", ws).exit_code == 0


def test_export_data(workspace: Path, tmp_path: Path, runner) -> None:
    _added(runner, workspace, tmp_path)
    result = invoke(runner, "export-data", tmp_path / "out", "-w", workspace, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["exported"] == 6 and data["per_pool"] == {"labeled": {"L1": 2, "L2": 2, "L3": 2}}
    assert len(list((tmp_path / "out" / "labeled").rglob("*.png"))) == 6
    again = sslall("export-data", tmp_path / "out", "-w", workspace)
    assert again.returncode == 2 and "--force" in one_error_line(again)
    inside = invoke(runner, "export-data", workspace / "exp", "-w", workspace)
    assert inside.exit_code == 2 and "inside the workspace" in inside.stderr
    text = invoke(runner, "export-data", tmp_path / "m.csv", "--format", "csv", "-w", workspace)
    assert text.exit_code == 0 and "exported 6 files (6 labeled)" in text.stdout
    assert (tmp_path / "m.csv").read_text().startswith(
        "path,label,label_source,confidence,pool,sample_id")
