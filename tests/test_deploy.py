"""deploy/: the files are valid, and their exact command lines behave as the README says when
two rounds overlap (the second exits 75 through the real lock, quietly; the first finishes)."""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import left_in_temp, paused
from test_rounds import build_workspace

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PLACEHOLDER_WS = "/srv/sslall/ward7"
PLACEHOLDER_EXE = "/opt/sslall/venv/bin/sslall"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / name).read_text())
    return parser


def cron_command() -> list[str]:
    """The command of the crontab's one schedule line, after checking its five time fields."""
    lines = [line for line in (DEPLOY / "crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 5)
    limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for field, (low, high) in zip(fields[:5], limits, strict=True):
        assert field == "*" or low <= int(field) <= high, field
    return shlex.split(fields[5])


def local(argv: list[str], ws: Path) -> list[str]:
    """A deploy command line run here: this venv's sslall, the test's workspace."""
    assert argv[0] == PLACEHOLDER_EXE, argv
    return [str(ws) if a == PLACEHOLDER_WS else a for a in argv[1:]]


def test_systemd_units_are_complete() -> None:
    service, timer = unit("sslall-round.service"), unit("sslall-round.timer")
    assert set(service.sections()) == {"Unit", "Service"}
    assert service["Service"]["Type"] == "oneshot"
    assert "75" in service["Service"]["SuccessExitStatus"].split()
    assert shlex.split(service["Service"]["ExecStart"])[:3] == [PLACEHOLDER_EXE, "--quiet", "round"]
    assert set(timer.sections()) == {"Unit", "Timer", "Install"}
    assert timer["Timer"]["Unit"] == "sslall-round.service" and timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_cronjob_has_what_kubernetes_needs() -> None:
    doc = yaml.safe_load((DEPLOY / "k8s-cronjob.yaml").read_text())
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    assert len(spec["schedule"].split()) == 5 and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (container,) = pod["containers"]
    assert container["name"] and container["image"]
    assert container["command"][:3] == ["sslall", "--quiet", "round"]
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}
    rule = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["onExitCodes"]["containerName"] == container["name"]


def test_sbatch_script_parses_and_uses_torchrun() -> None:
    script = DEPLOY / "slurm-round.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --gpus-per-node" in text
    assert '/bin/torchrun" --standalone --nproc_per_node' in text and "SSLALL_EXIT_FILE" in text


@pytest.mark.slow
def test_overlapping_scheduled_rounds_through_the_real_lock(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)
    service = shlex.split(unit("sslall-round.service")["Service"]["ExecStart"])
    marker = tmp_path / "paused"
    first = paused(local(service, ws), "train", marker)  # the timer's round, holding the lock
    try:
        second = subprocess.run([sys.executable, "-m", "sslall", *local(cron_command(), ws)],
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 75
        assert second.stdout == "" and second.stderr.count("\n") == 1
        assert "already running" in second.stderr
        # the Slurm script, run by bash here: torchrun, 2 processes on the CPU (gloo); rank 0
        # finds the lock busy, rank 1 hears it from rank 0, the script exits with rank 0's 75
        # (a temp folder of its own: torchelastic's log folder and the exit file must not be
        # left in it)
        venv = Path(sys.executable).parent.parent
        temp = tmp_path / "slurm-temp"
        temp.mkdir()
        env = {**os.environ, "SSLALL_WORKSPACE": str(ws), "SSLALL_VENV": str(venv),
               "SLURM_GPUS_ON_NODE": "2", "SLURM_CPUS_PER_TASK": "2", "TMPDIR": str(temp)}
        slurm = subprocess.run(["bash", str(DEPLOY / "slurm-round.sbatch")],
                               capture_output=True, text=True, env=env, timeout=300)
        assert slurm.returncode == 75, slurm.stderr[-2000:]
        assert "rank 0: sslall round is already running" in slurm.stderr  # said by rank 1
        assert left_in_temp(temp) == []
    finally:
        marker.unlink(missing_ok=True)  # let the first round go on
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert out == "" and err == ""  # --quiet: a successful round says nothing
    log = (ws / "logs" / "sslall.log").read_text()
    assert "round 1 recorded" in log and "already running" in log
