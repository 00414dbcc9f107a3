"""Rounds under torchrun: 2 CPU processes (gloo) against one process with the same seed.

Finetune (DDP): the config turns augmentation and dropout off, and the class-balanced draw is
dealt out round-robin, so a global batch holds the same rows as in one process and DDP's mean of
the two ranks' gradients is the one-process gradient of that batch, up to one thing: BatchNorm
normalises each rank's half batch (2 rows, not 4) by its own statistics. What is compared is
therefore what the round decides: the same number of moves per kind, the same holdout macro-F1
within 0.1, the same predicted class for at least 85 % of the rows, and every confidence within
0.05 (measured: 71 of 72 and 0.0005). Head and last-stage mode are exact: the same features or
maps (extracted in shards, cached by rank 0 alone) and heads (or the last stage) trained on rank 0
alone give the same predictions row for row.
A busy lock under torchrun (rank 0's error reaching rank 1, the code 75 through the exit file)
is tested with the Slurm script in test_deploy.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import left_in_temp, long_temp_folder, sslall
from store.test_import_workers import alive
from test_rounds import build_workspace

from sslall.model._distributed import DealtSampler, shard_bounds
from sslall.store._pools import PoolStore

NO_AUGMENT = """
[augment]
hflip = false
vflip = false
rotation = 0.0
zoom = 0.0
brightness = 0.0
contrast = 0.0
stain = 0.0
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    ws = build_workspace(tmp_path_factory.mktemp("dist"), CliRunner())
    config = ws / "sslall.toml"
    text = config.read_text().replace("epochs = 8", "epochs = 5\ndropout = 0.0")
    config.write_text(text.replace("batch_size = 16", "batch_size = 4") + NO_AUGMENT)
    return ws


def copy(template: Path, dest: Path) -> Path:
    """A copy of the workspace (its store names the template's image files, which stay put)."""
    shutil.copytree(template, dest)
    return dest


def round_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("\nround ")[0])


def predictions(ws: Path) -> dict[str, dict]:
    with (ws / "runs" / "round-0001" / "predictions.csv").open(newline="") as handle:
        return {row["sample_id"]: row for row in csv.DictReader(handle)}


def torchrun(*args: object) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m sslall ARGS`, as a deploy script would write it."""
    logs = tempfile.mkdtemp(prefix="torchrun-logs-")  # else torchelastic leaves one in /tmp
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--log-dir={logs}", "-m", "sslall", *map(str, args)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        shutil.rmtree(logs, ignore_errors=True)


@pytest.mark.slow
def test_finetune_round_on_two_ranks_matches_one_process(template: Path, tmp_path: Path) -> None:
    one, two = copy(template, tmp_path / "one"), copy(template, tmp_path / "two")
    single = round_json(sslall("round", "-w", one, "--mode", "finetune", "--json"))
    # torchelastic leaves a log folder in the temp folder unless told where; a temp folder of
    # the test's own, too long for a Unix socket in it: the ranks' DataLoader workers must
    # still hand their batches back
    temp = long_temp_folder(tmp_path)
    ddp = round_json(sslall("round", "-w", two, "--mode", "finetune", "--json", "--nproc",
                            "2", env={"TMPDIR": str(temp)}))
    assert left_in_temp(temp) == []  # no torchelastic_* log folder, nothing else of the launch
    assert ddp["moves"] == single["moves"] and ddp["pools"] == single["pools"]
    assert abs(ddp["metrics"]["macro_f1"] - single["metrics"]["macro_f1"]) <= 0.1
    a, b = predictions(one), predictions(two)
    assert a.keys() == b.keys() and len(a) == 72
    agree = sum(a[k]["prediction"] == b[k]["prediction"] for k in a) / len(a)
    assert agree >= 0.85, agree
    assert max(abs(float(a[k]["confidence"]) - float(b[k]["confidence"])) for k in a) <= 0.05
    # one round recorded once, by one process, and the store passes its checks
    with PoolStore(two / "pools" / "pools.db") as store:
        assert store.last_round() == 1
    assert json.loads((two / "runs" / "round-0001" / "metrics.json").read_text())["mode"] == "finetune"
    assert sslall("check", "-w", two).returncode == 0


def processes_on(ws: Path) -> list[int]:
    """Pids of the processes running a command on `ws` (the launcher, torchrun, the ranks)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.fsencode(str(ws)) in cmdline and alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_launcher_stops_torchrun_and_its_ranks(template: Path, tmp_path: Path,
                                                         sig: signal.Signals) -> None:
    ws = copy(template, tmp_path / "ws")
    config = ws / "sslall.toml"
    config.write_text(config.read_text().replace("epochs = 5", "epochs = 500")
                      .replace("patience = 4", "patience = 500"))
    temp = tmp_path / "temp"
    temp.mkdir()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "sslall", "round", "-w", str(ws), "--mode", "finetune", "--nproc", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"})
    try:  # a kill of the launcher alone (not its process group): torchrun must not be orphaned
        deadline = time.monotonic() + 300
        while len(processes_on(ws)) < 4 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # launcher, torchrun and the two ranks
        assert len(processes_on(ws)) == 4, "the ranks never started"
        time.sleep(3)  # into the round
        launcher.send_signal(sig)
        stderr = launcher.communicate(timeout=120)[1]
        deadline = time.monotonic() + 90  # torchrun gives its ranks 30 s after SIGTERM
        while processes_on(ws) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = processes_on(ws)
    finally:
        for pid in processes_on(ws):
            os.kill(pid, signal.SIGKILL)
        launcher.kill()
    assert left == [], "a rank or torchrun outlived the launcher"
    assert launcher.returncode == 128 + sig if sig == signal.SIGTERM else launcher.returncode == -sig
    if sig == signal.SIGTERM:
        assert stderr.strip() == "torchrun: stopped by SIGTERM; its ranks were stopped", stderr
        assert left_in_temp(temp) == []
    with PoolStore(ws / "pools" / "pools.db") as store:
        assert store.last_round() == 0  # the stopped round changed nothing
    assert sslall("check", "-w", ws).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["head", "last-stage"])
def test_cached_input_round_under_torchrun_is_exact_and_only_rank_0_writes(
        template: Path, tmp_path: Path, mode: str) -> None:
    one, two = copy(template, tmp_path / "one"), copy(template, tmp_path / "two")
    single = round_json(sslall("round", "-w", one, "--mode", mode, "--json"))
    ddp = round_json(torchrun("round", "-w", two, "--mode", mode, "--json"))
    assert ddp["moves"] == single["moves"]
    a, b = predictions(one), predictions(two)
    assert a.keys() == b.keys()
    assert all(a[k]["prediction"] == b[k]["prediction"] for k in a)
    assert all(abs(float(a[k]["confidence"]) - float(b[k]["confidence"])) <= 1e-4 for k in a)
    shards = list((two / "cache" / "features").glob("*/*.ids"))
    assert len(shards) >= 2  # rank 0's own shard, then rank 1's, as it arrived
    writers = {path.name.split("-")[1] for path in shards}
    assert len(writers) == 1, writers  # one writing process: rank 0
    logged = (two / "logs" / "sslall.log").read_text()
    assert logged.count("round 1 recorded") == 1
    assert sslall("check", "-w", two).returncode == 0


def test_shards_cover_every_row_once() -> None:
    from sslall.model._distributed import Dist

    for n in (0, 1, 5, 72):
        bounds = [shard_bounds(n, Dist(r, 3, r, "gloo", None)) for r in range(3)]  # type: ignore[arg-type]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    base = list(range(7))
    dealt = [list(DealtSampler(base, r, 2)) for r in range(2)]  # type: ignore[arg-type]
    assert dealt == [[0, 2, 4, 6], [1, 3, 5, 0]]


def test_nproc_inside_torchrun_is_refused(template: Path) -> None:
    proc = sslall("round", "-w", template, "--nproc", "2", env={"WORLD_SIZE": "2"})
    assert proc.returncode == 2 and "inside torchrun" in proc.stderr
