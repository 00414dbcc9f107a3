"""Startup stays fast: `--help` and a round refused on a busy workspace load no torch.

A scheduled `sslall round` on a busy workspace must answer 75 at once; on a loaded machine
importing torch alone took 13-24 s. The checks look at what was imported, not at the clock.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sslall.workspace import Workspace, round_lock

HEAVY = ("torch", "timm", "faiss")

# Runs the real CLI's entry point in a fresh interpreter; at exit, whatever the exit code,
# writes the heavy modules it had imported (one a line) to the file named by argv[1].
REPORT_IMPORTS = """
import atexit, sys
report, sys.argv = sys.argv[1], ["sslall", *sys.argv[2:]]
heavy = {heavy!r}
atexit.register(lambda: open(report, "w").write("".join(
    m + "\\n" for m in heavy if m in sys.modules)))
from sslall.cli import main
main()
"""


def cli_imports(tmp_path: Path, *args: object, env: dict | None = None
                ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`sslall ARGS` in a fresh interpreter: its result and the heavy modules it imported."""
    report = tmp_path / "imported.txt"
    script = REPORT_IMPORTS.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script, str(report), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)
    assert report.is_file(), done.stderr
    return done, report.read_text().split()


def test_help_imports_no_torch(tmp_path: Path) -> None:
    done, imported = cli_imports(tmp_path, "--help")
    assert done.returncode == 0 and "round" in done.stdout
    assert imported == []


@pytest.mark.parametrize("extra", [[], ["--nproc", "2"]], ids=["one-process", "nproc"])
def test_a_refused_round_imports_no_torch(workspace: Path, tmp_path: Path, extra: list) -> None:
    exit_file = tmp_path / "exit-code"
    with round_lock(Workspace(workspace), "sslall round"):
        done, imported = cli_imports(tmp_path, "round", "-w", workspace, *extra,
                                     env={"SSLALL_EXIT_FILE": str(exit_file)})
    assert done.returncode == 75, done.stderr
    assert "already running" in done.stderr
    assert imported == []
    assert exit_file.read_text() == "75\n"  # what `--nproc` relays from rank 0


def test_the_launcher_helpers_import_no_torch() -> None:
    script = ("import sys; import sslall.model._launcher; "
              f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


# A mistaken `predict` or `evaluate` is answered before torch loads (seconds on a busy machine):
# the option, the workspace, the round and the checkpoint path are all checked first.
@pytest.mark.parametrize(("args", "code", "says"), [
    (["predict", "--round", "abc", "x.png"], 2, "Invalid value for '--round'"),
    (["predict", "--round", "1", "--checkpoint", "c", "x.png"], 2, "not both"),
    (["predict", "--round", "99", "x.png"], 3, "round 99 has no checkpoint"),
    (["predict", "x.png"], 3, "no round has finished yet"),
    (["predict", "--checkpoint", "nowhere/round-0001", "x.png"], 3, "checkpoint not found"),
    (["predict", "--checkpoint", "c.safetensors", "x.png"], 3, "checkpoint file not found"),
    (["evaluate", "--round", "7", "cells"], 3, "round 7 has no checkpoint"),
], ids=["bad-value", "round-and-checkpoint", "unknown-round", "no-round-yet",
        "missing-folder", "missing-file", "evaluate-unknown-round"])
def test_predict_mistakes_are_answered_before_torch(workspace: Path, tmp_path: Path, args: list,
                                                    code: int, says: str) -> None:
    done, imported = cli_imports(tmp_path, *args, env={"SSLALL_WORKSPACE": str(workspace)})
    assert done.returncode == code, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert imported == []


def test_predict_without_a_workspace_is_answered_before_torch(tmp_path: Path) -> None:
    report = tmp_path / "imported.txt"
    done = subprocess.run([sys.executable, "-c", REPORT_IMPORTS.format(heavy=HEAVY), str(report),
                           "predict", "x.png"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "SSLALL_WORKSPACE": ""}, timeout=600)
    assert done.returncode == 3, done.stderr
    assert "not inside an sslall workspace" in done.stderr
    assert report.read_text().split() == []
