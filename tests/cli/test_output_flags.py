"""`--json` and `--out` mean the same on every command: `--json` prints JSON and nothing else on
stdout (human lines go to stderr); `--out FILE` writes the output to FILE instead (the format from
the flag, else from the name's suffix) and leaves stdout empty.

Every command offering `--json` is listed here (a new one fails the coverage test until it is):
run for real on a tiny workspace with one finished round.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer.main
from conftest import invoke
from test_rounds import build_workspace
from typer.testing import CliRunner

from sslall.cli import app
from sslall.store._pools import PoolStore

# command -> its arguments ({name} is filled from the lab fixture); their --json output is checked
READ_ONLY = {
    "status": [], "check": ["--no-files"], "conflicts": [], "quarantine list": [],
    "config show": [], "predict": ["{image}"], "evaluate": ["{cells}"],
    "sample show": ["{sample}"], "prune": ["--dry-run"],
    "relocate": ["{cells}", "{moved}", "--dry-run"],
}
CHANGING = {
    "add": ["unlabeled", "{new_image}"], "promote": ["1"], "export-data": ["{tmp}/exported"],
    "sample set-label": ["{sample}", "L2", "--reason", "output test"], "review import": ["{queue}"],
    "sample remove": ["{removed}", "--reason", "output test"], "quarantine release": ["--all"],
    "holdout carve": ["--fraction", "0.2"], "round": [], "run": ["--rounds", "1"],
    "explain": ["{image}", "--out", "{tmp}/cams"],
    "export": ["--format", "torchscript", "--out", "{tmp}/model.pt"],
    "compare": ["--backbones", "baseline-cnn", "--epochs", "1", "--out", "{tmp}/compare"],
    "simulate": ["{cells}", "--test-dir", "{cells}", "--labels-per-class", "5", "--rounds", "1",
                 "--budget", "3", "--backbone", "baseline-cnn", "--mode", "head",
                 "--image-size", "32", "--work", "{tmp}/sim"],
}
# their own --out is the artifact they write (a model, a folder), so --json stays on stdout
OWN_OUT = {"explain", "export", "compare"}
NEEDS_LABEL_STUDIO = {"label push", "label pull", "label status", "labelstudio up"}


def json_commands() -> set[str]:
    """Every command (group and sub-command names joined) that has a --json option."""
    found: set[str] = set()

    def walk(command, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        if any(p.name == "json_out" for p in command.params):
            found.add(" ".join(path))

    walk(typer.main.get_command(app), [])
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("flags")
    runner = CliRunner()
    ws = build_workspace(root, runner)
    assert invoke(runner, "round", "-w", ws).exit_code == 0
    assert invoke(runner, "review", "export", "--out", root / "queue.csv", "-w", ws).exit_code == 0
    with PoolStore(ws / "pools" / "pools.db", read_only=True) as store:
        labeled = sorted(s.id for s in store.samples("labeled"))
    new_image = root / "new.png"
    shutil.copy(next((root / "cells" / "L1").glob("*.png")), new_image)
    new_image.write_bytes(new_image.read_bytes() + b"\0")  # other bytes: a new sample
    shutil.copytree(root / "cells", root / "moved")
    return {"ws": ws, "image": next((root / "cells" / "L2").glob("*.png")), "cells": root / "cells",
            "sample": labeled[0], "removed": labeled[1], "queue": root / "queue.csv",
            "new_image": new_image, "tmp": root, "moved": root / "moved"}


def args_of(template: list[str], lab: dict) -> list[str]:
    return [a.format(**lab) for a in template]


def test_every_json_command_is_covered() -> None:
    assert json_commands() == set(READ_ONLY) | set(CHANGING) | NEEDS_LABEL_STUDIO


@pytest.mark.parametrize("command", [*READ_ONLY, *CHANGING])
def test_json_prints_json_and_nothing_else_on_stdout(lab: dict, command: str) -> None:
    template = READ_ONLY.get(command, CHANGING.get(command))
    where = [] if command == "simulate" else ["-w", lab["ws"]]  # simulate makes its own
    result = invoke(CliRunner(), *command.split(), *args_of(template, lab), *where, "--json")
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)  # the whole of stdout is one JSON document


@pytest.mark.parametrize("command", [*READ_ONLY])
@pytest.mark.parametrize("flag", [[], ["--json"]], ids=["by-suffix", "with-flag"])
def test_out_writes_the_file_and_leaves_stdout_empty(lab: dict, command: str, flag: list,
                                                     tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    on_stdout = invoke(CliRunner(), *command.split(), *args_of(READ_ONLY[command], lab), "-w",
                       lab["ws"], "--json")
    result = invoke(CliRunner(), *command.split(), *args_of(READ_ONLY[command], lab), "-w",
                    lab["ws"], *flag, "--out", target)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and f"wrote {target}" in result.stderr
    assert json.loads(target.read_text()).__class__ is json.loads(on_stdout.stdout).__class__


def test_predict_csv_goes_to_stdout_or_to_out(lab: dict, tmp_path: Path) -> None:
    printed = invoke(CliRunner(), "predict", lab["image"], "-w", lab["ws"], "--csv")
    assert printed.exit_code == 0 and printed.stdout.startswith("path,class,confidence,")
    target = tmp_path / "p.csv"
    written = invoke(CliRunner(), "predict", lab["image"], "-w", lab["ws"], "--out", target)
    assert written.exit_code == 0 and written.stdout == ""
    assert target.read_text() == printed.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["--out", "{tmp}/x.txt"], "cannot tell the format of x.txt: give --json or --csv"),
    (["--json", "--csv"], "give --json or --csv, not both"),
])
def test_predict_output_mistakes_are_one_line(lab: dict, args: list, says: str) -> None:
    result = invoke(CliRunner(), "predict", lab["image"], "-w", lab["ws"], *args_of(args, lab))
    assert result.exit_code == 2 and says in result.stderr and result.stdout == ""


def test_status_refuses_a_csv_out(lab: dict) -> None:
    result = invoke(CliRunner(), "status", "-w", lab["ws"], "--out", lab["tmp"] / "s.csv")
    assert result.exit_code == 2 and "give --json, or a .json name" in result.stderr


def test_review_export_prints_csv_and_the_old_csv_file_form_still_works(lab: dict) -> None:
    printed = invoke(CliRunner(), "review", "export", "-w", lab["ws"])
    assert printed.exit_code == 0 and printed.stdout.startswith("sample_id,")
    old = lab["tmp"] / "old-queue.csv"
    result = invoke(CliRunner(), "review", "export", "--csv", old, "-w", lab["ws"])
    assert result.exit_code == 0 and old.read_text() == printed.stdout
    assert "warning: --csv FILE is deprecated here; give --out instead" in result.stderr
