"""`sslall compare`: several backbones on one split, tiny models with random weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import CLASSES, invoke, make_class_tree

from sslall.experiments._compare import Labelled, split_labelled


def test_split_is_stratified_seeded_and_disjoint() -> None:
    rows = [(f"{i:064x}", f"p{i}", i % 3) for i in range(30)]
    data = Labelled(CLASSES, rows)
    train, val, test = split_labelled(data, test_fraction=0.3, val_fraction=0.25, seed=4)
    assert sorted(train + val + test) == list(range(30))
    assert [sum(rows[i][2] == c for i in test) for c in range(3)] == [3, 3, 3]
    assert [sum(rows[i][2] == c for i in val) for c in range(3)] == [2, 2, 2]
    assert split_labelled(data, test_fraction=0.3, val_fraction=0.25, seed=4) == (train, val, test)
    assert split_labelled(data, test_fraction=0.3, val_fraction=0.25, seed=5) != (train, val, test)


def test_compare_two_backbones_on_the_same_split(tmp_path: Path, runner, monkeypatch) -> None:
    data = make_class_tree(tmp_path / "cells", per_class=6)
    shutil.copy(data / "L1" / "L1_0.png", data / "L1" / "copy.png")  # dropped, never split apart
    monkeypatch.setenv("SSLALL_OFFLINE", "1")
    out = tmp_path / "cmp"
    result = invoke(runner, "compare", "--backbones", "test_resnet,baseline-cnn",
                    "--weights", "random", "--data", data, "--epochs", "2", "--image-size", "32",
                    "--out", out, "-w", tmp_path / "nowhere")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compare.json").read_text())
    setup = report["setup"]
    assert setup["duplicates_dropped"] == 1 and setup["images"] == 18
    assert (setup["train"], setup["validation"], setup["test"]) == (9, 3, 6)
    names = [r["backbone"] for r in report["backbones"]]
    assert names == ["test_resnet", "baseline-cnn"]
    for r in report["backbones"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1
        assert list(r["per_class_f1"]) == list(CLASSES)
        assert r["parameters"] > 0 and r["train_images_per_s"] > 0
        assert r["inference_images_per_s"] > 0
    table = (out / "compare.md").read_text()
    assert table.count("\n| ") == 2 and "| test_resnet |" in table
    assert "9 train / 3 validation / 6 test images" in result.stdout

    # a workspace's labeled pool, pretrained weights offline: that backbone is reported as not
    # run, the others still run
    ws = tmp_path / "ws"
    assert invoke(runner, "init", ws, "--classes", ",".join(CLASSES)).exit_code == 0
    assert invoke(runner, "add", "labeled", data, "-w", ws, "--workers", "1").exit_code == 0
    offline = invoke(runner, "compare", "--backbones", "baseline-cnn,resnet18", "-w", ws,
                     "--epochs", "1", "--image-size", "32", "--out", out, "--json")
    assert offline.exit_code == 0, offline.output
    report = json.loads((out / "compare.json").read_text())
    assert report["setup"]["images"] == 18 and report["setup"]["test"] == 6
    rows = report["backbones"]
    assert "error" not in rows[0] and "offline mode is on" in rows[1]["error"]


def test_compare_in_last_stage_mode(tmp_path: Path, runner) -> None:
    data = make_class_tree(tmp_path / "cells", per_class=6)
    out = tmp_path / "cmp"
    result = invoke(runner, "compare", "--backbones", "baseline-cnn", "--mode", "last-stage",
                    "--weights", "random", "--data", data, "--epochs", "2", "--image-size", "32",
                    "--out", out, "-w", tmp_path / "nowhere")
    assert result.exit_code == 0, result.output
    row = json.loads((out / "compare.json").read_text())["backbones"][0]
    assert "error" not in row and 0 <= row["macro_f1"] <= 1 and row["train_images_per_s"] > 0


def test_compare_refuses_bad_input_in_one_line(tmp_path: Path, runner) -> None:
    data = make_class_tree(tmp_path / "cells", per_class=3)
    unknown = invoke(runner, "compare", "--backbones", "resnet18,resnett50", "--data", data,
                     "--weights", "random", "--out", tmp_path / "o")
    assert unknown.exit_code == 2 and "unknown backbone 'resnett50'" in unknown.output
    mode = invoke(runner, "compare", "--backbones", "baseline-cnn", "--mode", "both",
                  "--data", data, "--out", tmp_path / "o")
    assert mode.exit_code == 2 and "--mode" in mode.output
    few = make_class_tree(tmp_path / "few", per_class=2)
    small = invoke(runner, "compare", "--backbones", "baseline-cnn", "--data", few,
                   "--weights", "random", "--out", tmp_path / "o")
    assert small.exit_code == 2 and "at least 3 per class" in small.output
    assert not (tmp_path / "o").exists()
