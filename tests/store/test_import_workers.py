"""`sslall add` starts decoding workers: none of them outlives a killed `add`, none holds the
workspace lock, and a file a manifest names is read only where the manifest was checked."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLASSES, paused, sslall, write_image

from sslall._fsutil import sha256_file
from sslall.store._importer import import_entries
from sslall.store._pools import PoolStore
from sslall.store._sources import list_source


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie holds no file and no lock)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def many_images(root: Path, n: int) -> list[Path]:
    paths = [root / f"d{i % 5}" / f"{i}.png" for i in range(n)]
    for i, path in enumerate(paths):
        write_image(path, 50_000 + i, size=16)
    return paths


@pytest.mark.parametrize("source", ["folder", "manifest"])
def test_a_killed_add_leaves_no_worker_and_no_lock(workspace: Path, tmp_path: Path,
                                                   source: str) -> None:
    src = tmp_path / "many"
    paths = many_images(src, 700)  # more than one batch of 512: the pause comes after one
    target: Path = src
    if source == "manifest":
        target = src / "list.csv"
        target.write_text("path\n" + "".join(f"{p.relative_to(src)}\n" for p in paths))
    proc = paused(["add", "unlabeled", target, "-w", workspace, "--workers", "2"],
                  "import-batch", tmp_path / "paused")
    workers = children_of(proc.pid)
    assert len(workers) >= 2, workers  # the pool's workers are running
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()  # not communicate(): a surviving worker would keep the pipes open
    proc.stderr.close()
    deadline = time.monotonic() + 3  # PR_SET_PDEATHSIG: at once; the watchdog: 0.2 s
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [w for w in workers if alive(w)]
    for w in survivors:  # leave nothing behind even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not survivors, "a worker outlived the killed add"
    other = tmp_path / "other"
    write_image(other / "x.png", 7, size=16)
    again = sslall("add", "unlabeled", other, "-w", workspace)
    assert again.returncode == 0, again.stderr  # not 75: nothing holds the lock
    resumed = sslall("add", "unlabeled", target, "-w", workspace, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert sslall("check", "-w", workspace).returncode == 0


def test_a_manifest_file_swapped_for_a_link_outside_after_validation_is_not_read(
        tmp_path: Path) -> None:
    folder = tmp_path / "data"
    inside = folder / "cell.png"
    write_image(inside, 1, size=16)
    outside = tmp_path / "secret.png"
    write_image(outside, 2, size=16)
    secret_bytes = outside.read_bytes()
    manifest = folder / "list.csv"
    manifest.write_text("path\ncell.png\n")
    entries = list_source(manifest, "unlabeled", CLASSES)  # validated: inside the folder
    inside.unlink()
    inside.symlink_to(outside)  # swapped after validation
    for workers in (1, 2):  # in this process and in a worker
        with PoolStore(tmp_path / f"pools-{workers}.db", create=True) as store:
            report = import_entries(store, entries, "unlabeled", max_pixels=10**6,
                                    workers=workers, within=str(folder.resolve()))
            assert not report.added.get("unlabeled")
            assert report.quarantined[0][1].startswith("unreadable: now leads outside")
            assert store.get(sha256_file(outside)) is None  # the outside bytes are no sample
    assert outside.read_bytes() == secret_bytes


def test_a_manifest_link_inside_its_folder_is_still_imported(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    real = folder / "real" / "cell.png"
    write_image(real, 3, size=16)
    (folder / "link.png").symlink_to(real)
    manifest = folder / "list.csv"
    manifest.write_text("path\nlink.png\n")
    with PoolStore(tmp_path / "pools.db", create=True) as store:
        entries = list_source(manifest, "unlabeled", CLASSES)
        report = import_entries(store, entries, "unlabeled", max_pixels=10**6, workers=1,
                                within=str(folder.resolve()))
        assert report.added["unlabeled"] == 1
        assert store.get(sha256_file(real)) is not None


def test_a_fifo_listed_in_a_manifest_is_quarantined_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "list.csv").write_text("path\npipe.png\n")
    ws = tmp_path / "ws"
    assert sslall("init", ws, "--classes", ",".join(CLASSES)).returncode == 0
    try:
        result = subprocess.run(
            [*_cli(), "add", "unlabeled", folder / "list.csv", "-w", ws, "--json"],
            capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("sslall add blocked on a fifo")
    assert result.returncode == 0, result.stderr
    assert '"reason": "not-a-file' in result.stdout


def _cli() -> list:
    import sys

    return [sys.executable, "-m", "sslall"]
