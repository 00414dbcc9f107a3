"""A round lists a deliberately mislabelled human label as a suspected label error: in the round
folder's label_issues.csv, the round's summary and `sslall status`."""

import csv
import json
from pathlib import Path

from conftest import invoke
from test_rounds import build_workspace


def test_a_mislabelled_cell_is_listed_for_a_second_look(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner, mislabel={0: "L3"}, difficulty=0.0)  # row 0: an L1 cell
    with (tmp_path / "cells" / "labeled.csv").open() as handle:
        wrong = next(csv.DictReader(handle))
    assert wrong["label"] == "L3" and wrong["path"].startswith("L1/")
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    with (ws / "runs" / "round-0001" / "label_issues.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert summary["label_issues"] == len(rows) and "label-issues" in summary["seconds"]
    suspect = rows[0]  # the most suspect
    assert suspect["path"].endswith(wrong["path"]) and suspect["pool"] == "labeled"
    assert (suspect["label"], suspect["suggested"]) == ("L3", "L1")
    assert float(suspect["quality"]) == float(suspect["p_label"]) < 0.1
    status = json.loads(invoke(runner, "status", "-w", ws, "--json").stdout)
    assert status["label_issues"]["round"] == 1
    assert [i["sample_id"] for i in status["label_issues"]["issues"]] == [r["sample_id"] for r in rows]
    text = invoke(runner, "status", "-w", ws).stdout
    assert f"suspected label errors (round 1): {len(rows)}" in text and "L3 -> L1" in text
