import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import invoke, make_class_tree, sslall, write_image


def test_init_writes_documented_config_and_refuses_twice(workspace: Path, runner) -> None:
    text = (workspace / "sslall.toml").read_text()
    assert 'classes = ["L1", "L2", "L3"]' in text and 'backbone = "baseline-cnn"' in text
    assert (workspace / "pools" / "pools.db").is_file() and (workspace / "runs").is_dir()
    result = invoke(runner, "init", workspace, "--classes", "A,B")
    assert result.exit_code == 2 and "already a workspace" in result.stderr
    result = invoke(runner, "init", workspace.parent / "x", "--classes", "A")
    assert result.exit_code == 2 and "at least 2 classes" in result.stderr


def test_workspace_is_found_by_option_env_and_upward_search(workspace: Path, tmp_path: Path
                                                            ) -> None:
    deep = workspace / "runs" / "deeper"
    deep.mkdir()
    assert sslall("status", "--json", cwd=deep).returncode == 0
    env_run = sslall("status", "--json", cwd=tmp_path, env={"SSLALL_WORKSPACE": str(workspace)})
    assert env_run.returncode == 0 and '"L1"' in env_run.stdout
    outside = sslall("status", cwd=tmp_path, env={"SSLALL_WORKSPACE": ""})
    assert outside.returncode == 3
    assert outside.stderr.strip().count("\n") == 0 and "not inside an sslall workspace" in outside.stderr


def test_bad_config_is_one_line_no_traceback(workspace: Path) -> None:
    path = workspace / "sslall.toml"
    path.write_text(path.read_text().replace("[route]", "[route]\nbudgett = 3"))
    result = sslall("status", "-w", workspace)
    assert result.returncode == 2
    assert "config key 'route.budgett': unknown key (allowed: route, strategy" in result.stderr
    assert "Traceback" not in result.stderr
    debug = sslall("--debug", "status", "-w", workspace)
    assert "Traceback" in debug.stderr


def test_status_json_and_check(workspace: Path, tmp_path: Path, runner) -> None:
    src = make_class_tree(tmp_path / "src", per_class=2)
    invoke(runner, "add", "labeled", src, "-w", workspace)
    write_image(tmp_path / "u" / "a.png", 99)
    invoke(runner, "add", "unlabeled", tmp_path / "u", "-w", workspace)
    result = invoke(runner, "status", "-w", workspace, "--json")
    import json

    data = json.loads(result.stdout)
    assert data["classes"] == ["L1", "L2", "L3"]
    assert data["pools"] == {"labeled": 6, "unlabeled": 1, "pseudo": 0, "review": 0,
                             "holdout": 0, "quarantine": 0}
    assert data["per_class"]["labeled"] == {"L1": 2, "L2": 2, "L3": 2}
    assert data["rounds"] == [] and data["latest_checkpoint"] is None
    table = invoke(runner, "status", "-w", workspace)
    assert "labeled" in table.stdout and "no rounds yet" in table.stdout
    assert invoke(runner, "check", "-w", workspace).exit_code == 0
    (src / "L2" / "L2_1.png").write_bytes(b"edited")
    result = invoke(runner, "check", "-w", workspace)
    assert result.exit_code == 4
    assert "changed-file" in result.stdout and "1 invariant violation" in result.stderr


def test_every_command_has_help_with_an_example(runner) -> None:
    import typer.main

    from sslall.cli import app

    def leaves(group, prefix=()):
        for name, command in group.commands.items():
            if getattr(command, "commands", None):
                yield from leaves(command, (*prefix, name))
            else:
                yield (*prefix, name)

    names = list(leaves(typer.main.get_group(app)))
    assert ("review", "export") in names and ("round",) in names
    for name in names:
        result = invoke(runner, *name, "--help")
        assert result.exit_code == 0, name
        assert "Example:" in result.stdout, f"{' '.join(name)} --help has no example"


def test_import_killed_with_sigkill_leaves_a_consistent_store(workspace: Path, tmp_path: Path
                                                             ) -> None:
    src = tmp_path / "many"
    for i in range(1500):
        write_image(src / f"d{i % 7}" / f"{i}.png", 10_000 + i, size=16)
    proc = subprocess.Popen([sys.executable, "-m", "sslall", "add", "unlabeled", str(src), "-w",
                             str(workspace), "--workers", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = workspace / "pools" / "pools.db"
    deadline = time.monotonic() + 60
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        conn = sqlite3.connect(db)
        committed = conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        conn.close()
        if committed > 0:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < committed < 1500, "the kill should land mid-import"
    check = sslall("check", "-w", workspace)
    assert check.returncode == 0, check.stdout + check.stderr
    resumed = sslall("add", "unlabeled", src, "-w", workspace, "--json")
    assert resumed.returncode == 0, resumed.stderr
    final = sslall("status", "-w", workspace, "--json")
    assert '"unlabeled": 1500' in final.stdout
    assert sslall("check", "-w", workspace).returncode == 0
