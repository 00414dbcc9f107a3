"""Issue 6 guarantees not proven elsewhere (RELIABILITY.md maps every guarantee to its test):
commands that answer while a round runs, a killed lock holder, files edited or deleted after
import, a disk that fills or turns read-only while a round writes, pickles handed to
`--checkpoint`, and the Label Studio API key kept out of output, logs and process arguments."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import invoke, paused, sslall, write_image
from test_rounds import build_workspace, copy_ws, sample_rows
from typer.testing import CliRunner

from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("reliability"), CliRunner())


def one_error_line(proc) -> str:
    """The failed command's stderr (a process or a CliRunner result) is exactly one `error:`
    line and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def assert_sound(ws: Path) -> None:
    """`sslall check` passes (in-process: only the commands being killed need a process)."""
    check = invoke(CliRunner(), "check", "-w", ws)
    assert check.exit_code == 0, check.stdout + check.stderr


def next_round_completes(ws: Path) -> None:
    again = invoke(CliRunner(), "--quiet", "round", "-w", ws)
    assert again.exit_code == 0, again.stderr
    assert_sound(ws)


def test_status_answers_while_a_round_runs_and_a_killed_holder_never_blocks(
        template: Path, tmp_path: Path) -> None:
    ws = copy_ws(template, tmp_path)
    before = sample_rows(ws)
    proc = paused(["round", "-w", ws], "train", tmp_path / "paused")
    started = time.monotonic()
    status = sslall("status", "-w", ws, "--json")
    assert status.returncode == 0, status.stderr
    running = json.loads(status.stdout)["running"]
    assert running["pid"] == proc.pid and running["command"] == "sslall round"
    assert sslall("check", "-w", ws, "--no-files").returncode == 0
    for args in (["round", "-w", ws], ["add", "unlabeled", tmp_path, "-w", ws]):
        busy = sslall(*args)
        assert busy.returncode == 75 and f"pid {proc.pid}" in one_error_line(busy)
    assert time.monotonic() - started < 60, "read commands and refusals must not wait"

    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    # The dead holder's note is still in the lock file, but the kernel dropped its flock.
    assert json.loads((ws / ".lock").read_text())["pid"] == proc.pid
    assert json.loads(sslall("status", "-w", ws, "--json").stdout)["running"] is None
    assert sample_rows(ws) == before
    next_round_completes(ws)


def test_edited_and_deleted_files_are_quarantined_and_never_trained_on(
        template: Path, tmp_path: Path, runner) -> None:
    ws = copy_ws(template, tmp_path)
    with PoolStore(ws / "pools" / "pools.db") as store:
        edited = next(store.samples("labeled"))
        deleted = next(store.samples("unlabeled"))
    write_image(Path(edited.path), seed=424242, size=32)   # still a valid image, other bytes
    Path(deleted.path).unlink()
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    with PoolStore(ws / "pools" / "pools.db") as store:
        now_edited, now_deleted = store.get(edited.id), store.get(deleted.id)
        events = store.conn.execute("SELECT sample_id, round, reason FROM events WHERE to_pool = "
                                    "'quarantine'").fetchall()
    assert now_edited.pool == "quarantine" and now_edited.reason.startswith("changed-file")
    assert now_deleted.pool == "quarantine" and now_deleted.reason.startswith("missing-file")
    assert sorted(sid for sid, _, _ in events) == sorted([edited.id, deleted.id])
    assert {r for _, r, _ in events} == {1}
    # Neither was scored (the model never saw them): they appear only as quarantine rows.
    with (ws / "runs" / "round-0001" / "predictions.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["sample_id"] in (edited.id, deleted.id)]
    assert [(r["routed_to"], r["prediction"]) for r in rows] == [("quarantine", "")] * 2
    assert_sound(ws)


# -- a disk that fills up or turns read-only ------------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _root_mounts_or_skip(where: Path) -> None:
    """As root, prove this sandbox lets us mount; without root these tests use chmod."""
    probe = where / ".mount-probe"
    probe.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"running as root but mount is not permitted here ({exc})")
    subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()


@contextmanager
def read_only(*folders: Path) -> Iterator[None]:
    """Make folders read-only for sslall: a read-only bind mount as root (root ignores file
    modes), chmod a-w otherwise."""
    if os.geteuid() == 0:
        for f in folders:
            _mount("--bind", str(f), str(f))
            _mount("-o", "remount,bind,ro", str(f))
    else:
        for f in folders:
            f.chmod(0o555)
    try:
        yield
    finally:
        for f in folders:
            if os.geteuid() == 0:
                subprocess.run(["umount", str(f)], check=True)
            else:
                f.chmod(0o755)


def _fill(folder: Path) -> Path:
    """Write until the filesystem is full; return the filler file."""
    filler = folder / "filler"
    # unbuffered: a buffered writer would keep the bytes that did not fit and raise again on close
    with filler.open("wb", buffering=0) as handle:
        block = b"\0" * 65536
        try:
            while True:
                while handle.write(block) == len(block):
                    pass
                block = b"\0" * 512  # the last few free pages
        except OSError:
            pass
    return filler


@contextmanager
def _small_disk(template: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a real 4 MiB tmpfs, a copy of the template workspace on it); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a size-limited filesystem (tmpfs) needs root to mount")
    _root_mounts_or_skip(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    try:
        yield disk, copy_ws(template, disk)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def _resume(proc: subprocess.Popen, marker: Path) -> subprocess.CompletedProcess:
    marker.unlink()
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_disk_full_while_a_round_writes_its_checkpoint(template: Path, tmp_path: Path) -> None:
    with _small_disk(template, tmp_path) as (disk, ws):
        before = sample_rows(ws)
        marker = tmp_path / "paused"
        proc = paused(["--quiet", "round", "-w", ws], "record", marker)
        filler = _fill(disk)
        failed = _resume(proc, marker)
        assert failed.returncode == 1
        line = one_error_line(failed)
        assert "round 1 failed and was not recorded (No space left on device" in line, line
        assert "the pools are unchanged" in line
        assert sample_rows(ws) == before
        assert not [p for p in (ws / "runs").iterdir()], "a half-written round folder was kept"
        assert_sound(ws)
        filler.unlink()
        next_round_completes(ws)


def test_read_only_workspace_before_and_while_a_round_writes(template: Path,
                                                             tmp_path: Path) -> None:
    if os.geteuid() == 0:
        _root_mounts_or_skip(tmp_path)
    ws = copy_ws(template, tmp_path)
    before = sample_rows(ws)
    with read_only(ws):
        refused = sslall("round", "-w", ws)
        assert refused.returncode == 1
        assert "cannot open the round lock" in one_error_line(refused)
    assert sample_rows(ws) == before

    marker = tmp_path / "paused"
    proc = paused(["--quiet", "round", "-w", ws], "train", marker)
    (ws / "cache").mkdir(exist_ok=True)
    with read_only(ws / "cache", ws / "runs"):
        failed = _resume(proc, marker)
    assert failed.returncode == 1
    line = one_error_line(failed)
    assert "round 1 failed and was not recorded" in line, line
    assert "Read-only file system" in line or "Permission denied" in line, line
    assert sample_rows(ws) == before
    assert_sound(ws)
    next_round_completes(ws)


def test_read_commands_answer_on_a_read_only_workspace(template: Path, tmp_path: Path) -> None:
    """status, check, review export, report and predict open the store read-only: on a
    read-only workspace (a read-only bind mount as root) each answers, and nothing changes."""
    if os.geteuid() == 0:
        _root_mounts_or_skip(tmp_path)
    ws = copy_ws(template, tmp_path)
    next_round_completes(ws)
    before = sample_rows(ws)
    cell = next((ws.parent / "cells").rglob("*.png"))
    out = tmp_path / "out"
    out.mkdir()
    with read_only(ws):
        status = sslall("status", "-w", ws, "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["rounds"][0]["round"] == 1
        for args in (["check"], ["review", "export", "--csv", out / "queue.csv"],
                     ["report", "--out", out / "report.html"], ["predict", cell, "--json"]):
            done = sslall(*args, "-w", ws)
            assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
    assert (out / "queue.csv").read_text().startswith("sample_id,")
    assert (out / "report.html").stat().st_size > 0
    assert sample_rows(ws) == before
    assert_sound(ws)


def test_disk_full_while_add_imports(template: Path, tmp_path: Path) -> None:
    """A real 4 MiB tmpfs holds the workspace and fills up: `sslall add` is one line naming the
    full disk (not "unexpected"), the store stays sound, and once space is freed the same add
    imports everything."""
    with _small_disk(template, tmp_path) as (disk, ws):
        before = sample_rows(ws)
        new = tmp_path / "new"
        for i in range(40):
            write_image(new / f"n{i}.png", 500 + i, size=32)
        # While a reader holds the store open (its WAL index exists) the import's first batch
        # cannot be written; once it closes, SQLite cannot even make the index to open it.
        reader = PoolStore(ws / "pools" / "pools.db")
        filler = _fill(disk)
        for first in (True, False):
            failed = sslall("add", "unlabeled", new, "-w", ws, "--workers", "1")
            reader.close()
            assert failed.returncode == 1
            line = one_error_line(failed)
            assert "disk is full" in line, line
            assert ("the import stopped" if first else "cannot open the pool store") in line
            assert "unexpected" not in line, line
            assert sample_rows(ws) == before
        filler.unlink()
        assert_sound(ws)
        again = sslall("add", "unlabeled", new, "-w", ws, "--workers", "1", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["added"] == {"unlabeled": 40}
        assert_sound(ws)


# -- security ---------------------------------------------------------------------------------


class _Canary:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["evil.pkl", "evil.pt", "model.safetensors"])
def test_a_pickle_handed_to_checkpoint_is_refused_and_never_loaded(tmp_path: Path, runner,
                                                                   name: str) -> None:
    canary = tmp_path / "unpickled"
    bad = tmp_path / "given" / name
    bad.parent.mkdir()
    bad.write_bytes(pickle.dumps(_Canary(canary), protocol=4))
    targets = [bad]
    if name == "model.safetensors":   # a checkpoint folder whose weights were swapped
        from sslall.model._checkpoints import REQUIRED_META_KEYS

        (bad.parent / "model.json").write_text(json.dumps(dict.fromkeys(REQUIRED_META_KEYS, 1)))
        targets.append(bad.parent)
    image = write_image(tmp_path / "cell.png", 1)
    for target in targets:
        refused = invoke(runner, "predict", image, "--checkpoint", target)
        assert refused.exit_code == 2, refused.stderr
        assert "refusing to unpickle" in one_error_line(refused)
    assert not canary.exists()


SECRET = "sslall-test-secret-0123456789abcdef"


def test_the_api_key_stays_out_of_output_logs_and_errors(template: Path, tmp_path: Path,
                                                         runner, monkeypatch) -> None:
    from sslall.labelstudio._server import free_port

    ws = copy_ws(template, tmp_path)
    config = ws / "sslall.toml"
    config.write_text(config.read_text() + f'\n[labelstudio]\nurl = "http://127.0.0.1:'
                      f'{free_port()}"\nimages = "upload"\ntimeout = 2.0\n')
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", SECRET)
    seen = []
    result = invoke(runner, "round", "-w", ws, "--json")      # the server is down: a warning
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    warnings = json.loads(out[out.index("{"):out.rindex("}") + 1])["warnings"]
    assert any("Label Studio pull skipped" in w for w in warnings), warnings
    seen.append(result.stdout + result.stderr)
    for args in (["label", "push"], ["label", "pull", "--json"], ["label", "status", "--json"]):
        done = invoke(runner, *args, "-w", ws)
        assert done.exit_code == 5 and "cannot reach Label Studio" in one_error_line(done)
        seen.append(done.stdout + done.stderr)
    debug = sslall("--debug", "label", "push", "-w", ws, env={"LABEL_STUDIO_API_KEY": SECRET})
    assert "Traceback" in debug.stderr   # even the full traceback does not show it
    seen.append(debug.stdout + debug.stderr)
    seen.append((ws / "logs" / "sslall.log").read_text())
    for text in seen:
        assert SECRET not in text


def test_the_server_gets_the_key_in_its_environment_never_its_arguments(tmp_path: Path) -> None:
    """`labelstudio up` starts the server with the key; /proc shows what any user could read."""
    from sslall.labelstudio._server import credentials, start

    fake = tmp_path / "label-studio"   # stands in for the server binary: it only waits
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    data = tmp_path / "data"
    key = credentials(data).key_file.read_text().strip()
    proc = start(data, 18999, document_root=tmp_path, binary=fake)
    try:
        time.sleep(0.5)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode()
    finally:
        proc.kill()
        proc.wait()
    assert key not in argv and "--port" in argv
    assert f"LABEL_STUDIO_USER_TOKEN={key}" in environ.split("\0")
    assert oct(data.joinpath("api-key").stat().st_mode & 0o777) == "0o600"
