"""Bugs a lab met using the CLI (issue 18 item 8), each through the real command in-process.

One workspace for the module, labeled + unlabeled and no holdout (3 classes of tiny synthetic
32-px cells, baseline-cnn), with two rounds: the first routed to Label Studio with no server
configured, the second with the default route. `status`, `predict` and `evaluate` only read it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke, write_image
from test_rounds import CLASSES, TINY_CONFIG
from typer.testing import CliRunner

from sslall.data._synthetic import write_dataset
from sslall.store._records import POOLS

LS_WARNING = ("route 'labelstudio' sends the review queue to Label Studio, but [labelstudio] url "
              "is not set in sslall.toml: nothing was pushed (4 cell(s) wait in review; label "
              "them with `sslall review export`, or set the url)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """The workspace, its source folders and the two rounds' results."""
    root = tmp_path_factory.mktemp("lab-bugs")
    runner = CliRunner()
    cells = root / "cells"
    write_dataset(cells / "labeled", CLASSES, 6, size=32, seed=3, difficulty=0.3)
    write_dataset(cells / "unlabeled", CLASSES, 6, size=32, seed=4, difficulty=0.3)
    ws = root / "ws"
    assert invoke(runner, "init", ws, "--classes", ",".join(CLASSES)).exit_code == 0
    head, _ = (ws / "sslall.toml").read_text().split("\n[model]", 1)
    (ws / "sslall.toml").write_text(head + "\n" + TINY_CONFIG)
    for pool in ("labeled", "unlabeled"):
        result = invoke(runner, "add", pool, cells / pool, "-w", ws, "--workers", "1")
        assert result.exit_code == 0, result.output
    first = invoke(runner, "round", "-w", ws, "--route", "labelstudio", "--json")
    second = invoke(runner, "round", "-w", ws, "--json")
    return {"ws": ws, "cells": cells, "first": first, "second": second}


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the rich table row (or header) whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def error_lines(result) -> list[str]:
    """stderr's non-blank lines (a transient progress bar leaves a blank one)."""
    return [line for line in result.stderr.splitlines() if line.strip()]


def predict_json(runner: CliRunner, *args: object) -> list[dict]:
    result = invoke(runner, "predict", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# -- status in a workspace whose rounds ran without a holdout -------------------------------

def test_status_without_a_holdout_shows_rounds_with_no_metrics(lab: dict, runner) -> None:
    result = invoke(runner, "status", "-w", lab["ws"])
    assert result.exit_code == 0, result.stderr
    assert table_row(result.stdout, "1")[2:5] == ["-", "-", "-"]  # macro-F1, accuracy, ECE
    assert table_row(result.stdout, "2")[2:5] == ["-", "-", "-"]
    as_json = invoke(runner, "status", "-w", lab["ws"], "--json")
    assert as_json.exit_code == 0, as_json.stderr
    rounds = json.loads(as_json.stdout)["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["metrics"] for r in rounds] == [None, None]


def test_status_class_columns_of_pools_without_labels_show_a_dash(lab: dict, runner) -> None:
    result = invoke(runner, "status", "-w", lab["ws"])
    assert result.exit_code == 0, result.stderr
    sizes = json.loads(invoke(runner, "status", "-w", lab["ws"], "--json").stdout)["pools"]
    assert table_row(result.stdout, "labeled") == ["labeled", "6", "6", "6", "18"]
    assert table_row(result.stdout, "unlabeled") == [
        "unlabeled", "—", "—", "—", str(sizes["unlabeled"])]
    assert table_row(result.stdout, "review") == ["review", "—", "—", "—", str(sizes["review"])]
    assert sizes["review"] > 0 and sizes["unlabeled"] + sizes["review"] + sizes["pseudo"] == 18
    assert table_row(result.stdout, "holdout") == ["holdout", "0", "0", "0", "0"]


# -- a round routed to Label Studio with no server configured ------------------------------

def test_round_routed_to_labelstudio_without_a_url_says_so(lab: dict) -> None:
    first = lab["first"]
    assert first.exit_code == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["pools"]["review"] == 4
    assert summary["warnings"] == [LS_WARNING]
    assert f"warning: {LS_WARNING}" in first.stderr.splitlines()


def test_round_with_the_default_route_has_no_labelstudio_warning(lab: dict) -> None:
    second = lab["second"]
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["warnings"] == []
    assert "warning:" not in second.stderr


# -- add: one image file as the source ------------------------------------------------------

def test_add_unlabeled_one_image_is_a_source_of_one(workspace: Path, tmp_path: Path,
                                                     runner) -> None:
    one = write_image(tmp_path / "elsewhere" / "ONE.jpg", 7, size=32, fmt="JPEG")
    result = invoke(runner, "add", "unlabeled", one, "-w", workspace)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["added 1 to unlabeled"]
    again = invoke(runner, "add", "unlabeled", one, "-w", workspace, "--json")
    assert again.exit_code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["added"] == {} and report["already_present"] == 1
    # a link to an image in another folder is one image too (no manifest folder to stay in)
    link = tmp_path / "links" / "two.png"
    link.parent.mkdir()
    link.symlink_to(write_image(tmp_path / "other" / "two.png", 8, size=32))
    linked = invoke(runner, "add", "unlabeled", link, "-w", workspace, "--json")
    assert linked.exit_code == 0, linked.stderr
    assert json.loads(linked.stdout)["added"] == {"unlabeled": 1}
    status = json.loads(invoke(runner, "status", "-w", workspace, "--json").stdout)
    assert status["pools"]["unlabeled"] == 2 and status["pools"]["quarantine"] == 0


@pytest.mark.parametrize("pool", ["labeled", "holdout"])
def test_add_one_image_to_a_labelled_pool_is_refused_in_one_line(
        workspace: Path, tmp_path: Path, runner, pool: str) -> None:
    one = write_image(tmp_path / "ONE.png", 7, size=32)
    result = invoke(runner, "add", pool, one, "-w", workspace)
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: {one} is a single image, and the {pool} pool needs its class: add a folder "
        "with one sub-folder per class, or a CSV manifest with path and label columns"]
    status = json.loads(invoke(runner, "status", "-w", workspace, "--json").stdout)
    assert sum(status["pools"].values()) == 0


# -- predict: folders, manifests, and the per-class probabilities ---------------------------

def test_predict_a_folder_predicts_every_image_under_it_sorted(lab: dict, runner) -> None:
    folder = lab["cells"] / "unlabeled"
    rows = predict_json(runner, folder, "-w", lab["ws"])
    expected = sorted(str(p) for p in folder.rglob("*.png"))
    assert [r["path"] for r in rows] == expected and len(rows) == 18
    assert all(set(r["probabilities"]) == set(CLASSES) for r in rows)


def test_predict_a_manifest_reads_paths_relative_to_its_folder(lab: dict, runner,
                                                               tmp_path: Path) -> None:
    cells = lab["cells"]
    manifest = cells / "some.csv"
    chosen = ["unlabeled/L2/L2_00001.png", "labeled/L1/L1_00000.png"]
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path"], *[[p] for p in chosen]])
    single = cells / "labeled" / "L3" / "L3_00002.png"
    rows = predict_json(runner, manifest, single, "-w", lab["ws"])
    assert [r["path"] for r in rows] == [*(str(cells / p) for p in chosen), str(single)]
    outside = tmp_path / "outside.csv"
    outside.write_text("path\n../x.png\n")
    refused = invoke(runner, "predict", outside, "-w", lab["ws"])
    assert refused.exit_code == 2
    assert error_lines(refused) == [
        f"error: manifest outside.csv line 2: path '../x.png' is outside the manifest's folder "
        f"{tmp_path.resolve()}"]


def test_predict_an_empty_folder_is_refused_in_one_line(lab: dict, runner, tmp_path: Path
                                                        ) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    result = invoke(runner, "predict", tmp_path / "empty", "-w", lab["ws"])
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {tmp_path / 'empty'} names no image file"]


def test_predict_table_shows_every_class_probability(lab: dict, runner,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(lab["cells"] / "labeled")
    [row] = predict_json(runner, "L1/L1_00000.png", "-w", lab["ws"])
    table = invoke(runner, "predict", "L1/L1_00000.png", "-w", lab["ws"])
    assert table.exit_code == 0, table.stderr
    assert table_row(table.stdout, "path") == ["path", "class", "confidence", "ood", *CLASSES]
    assert not row["ood"]  # a training cell: the class column shows the class
    assert table_row(table.stdout, "L1/L1_00000.png") == [
        "L1/L1_00000.png", row["class"], str(row["confidence"]), str(row["ood_score"]),
        *(str(row["probabilities"][c]) for c in CLASSES)]
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-3


# -- evaluate: test images already in the workspace ------------------------------------------

def test_evaluate_counts_images_already_in_the_workspace_per_pool(lab: dict, runner,
                                                                  tmp_path: Path) -> None:
    test = tmp_path / "test"
    write_dataset(test, CLASSES, 2, size=32, seed=9, difficulty=0.3)  # 6 new images
    for name in ("L1_00000.png", "L1_00001.png"):
        shutil.copy(lab["cells"] / "labeled" / "L1" / name, test / "L1" / f"copy-{name}")
    result = invoke(runner, "evaluate", test, "-w", lab["ws"], "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["images"] == 8
    assert metrics["in_workspace"] == {"images": 2, "pools": {p: 2 if p == "labeled" else 0
                                                              for p in POOLS}}
    table = invoke(runner, "evaluate", test, "-w", lab["ws"])
    assert table.exit_code == 0, table.stderr
    assert table.stdout.splitlines()[-1] == (
        "2 of the 8 images are already in the workspace's pools (labeled 2): the score above is "
        "inflated by them")
    fresh = invoke(runner, "evaluate", lab["cells"] / "labeled", "-w", lab["ws"])
    assert fresh.stdout.splitlines()[-1] == (
        "18 of the 18 images are already in the workspace's pools (labeled 18): the score "
        "above is inflated by them")
    new = tmp_path / "new"
    write_dataset(new, CLASSES, 1, size=32, seed=11, difficulty=0.3)
    clean = invoke(runner, "evaluate", new, "-w", lab["ws"])
    assert clean.exit_code == 0, clean.stderr
    assert clean.stdout.splitlines()[-1] == "none of the 3 images is in the workspace's pools"


def test_evaluate_a_checkpoint_outside_any_workspace_says_it_did_not_compare(
        lab: dict, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLALL_WORKSPACE", raising=False)
    monkeypatch.chdir(tmp_path)
    checkpoint = lab["ws"] / "runs" / "round-0002"
    result = invoke(runner, "evaluate", lab["cells"] / "labeled", "--checkpoint", checkpoint,
                    "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["in_workspace"] is None
    table = invoke(runner, "evaluate", lab["cells"] / "labeled", "--checkpoint", checkpoint)
    assert table.stdout.splitlines()[-1] == (
        "no workspace found: not checked whether these images are in its pools")
