"""DataLoader workers (a round decodes images in `train.num_workers` of them) die with the
process that started them and never keep its round lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import left_in_temp, long_temp_folder, write_image
from store.test_import_workers import alive, children_of

from sslall.workspace import Workspace, lock_is_held, round_lock

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sslall.data._datasets import ImageDataset, eval_transform, make_loader
    from sslall.workspace import Workspace, round_lock

    root, images, marker = Path(sys.argv[1]), sys.argv[2:-1], Path(sys.argv[-1])
    with round_lock(Workspace(root), "test loader"):
        data = ImageDataset(images, eval_transform(16, (0.5,) * 3, (0.5,) * 3), max_pixels=10**6)
        batches = iter(make_loader(data, batch_size=1, num_workers=2))
        next(batches)  # the workers are running (persistent) and hold a batch each
        marker.write_text("ready")
        time.sleep(600)
""")


def test_loader_workers_die_with_a_killed_parent_and_the_lock_is_free(tmp_path: Path) -> None:
    images = [tmp_path / f"{i}.png" for i in range(8)]
    for i, path in enumerate(images):
        write_image(path, i, size=16)
    marker = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, tmp_path, *images, marker],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the loader never started"
    workers = children_of(proc.pid)
    assert len(workers) >= 2, workers
    assert lock_is_held(Workspace(tmp_path))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 3  # PR_SET_PDEATHSIG: at once; the watchdog: 0.2 s
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [w for w in workers if alive(w)]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    assert not survivors, "a DataLoader worker outlived its parent"
    assert not lock_is_held(Workspace(tmp_path))
    with round_lock(Workspace(tmp_path), "next"):
        pass


READER = textwrap.dedent("""
    import sys
    from sslall.data._datasets import ImageDataset, eval_transform, make_loader

    data = ImageDataset(sys.argv[1:], eval_transform(16, (0.5,) * 3, (0.5,) * 3), max_pixels=10**6)
    print(sum(len(batch) for batch, _ in make_loader(data, batch_size=2, num_workers=2)))
""")


def read_under_long_temp(tmp_path: Path, n: int, setup: str = "") -> subprocess.CompletedProcess:
    """READER (after `setup`) on `n` images with two workers, TMPDIR a 110-byte folder."""
    images = [tmp_path / f"{i}.png" for i in range(n)]
    for i, path in enumerate(images):
        write_image(path, i, size=16)
    temp = long_temp_folder(tmp_path)
    done = subprocess.run([sys.executable, "-c", setup + READER, *images], capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(temp)}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(n)  # every batch came back
    assert "path too long" not in done.stderr
    assert left_in_temp(temp) == []  # multiprocessing's folder went elsewhere, and is gone
    return done


def test_workers_hand_batches_back_under_a_temp_folder_too_long_for_a_socket(tmp_path: Path) -> None:
    # multiprocessing's listener socket in such a folder would pass 107 bytes: the worker's
    # send failed in a background thread and the loader waited forever
    done = read_under_long_temp(tmp_path, 6)
    assert "no temp folder is short enough" not in done.stderr  # the workers did the decoding


def test_no_short_temp_folder_means_decoding_in_the_main_process_not_a_hang(tmp_path: Path) -> None:
    done = read_under_long_temp(tmp_path, 4, "import sslall._workers as w\n"
                                "w._SHORT_FOLDERS = ('/nonexistent',)\n")
    assert "no temp folder is short enough for worker sockets" in done.stderr  # the fallback ran
