"""Out-of-distribution flags end to end: a tiny round writes its OOD files, `predict --json` gives
each image `ood` and `ood_score` (a cell like the training ones is not flagged, a picture unlike
any is, with the verdict "unknown"), `evaluate` counts the flagged images, and a round folder
from before OOD scores answers `ood: null`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke
from PIL import Image
from test_rounds import build_workspace
from typer.testing import CliRunner

from sslall.decide._ood import OOD_JSON, OOD_NPZ
from sslall.model._inference import Predictor
from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ood")
    runner = CliRunner()
    ws = build_workspace(root, runner)
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    noise = root / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    ).save(noise)
    return {"ws": ws, "cells": root / "cells", "run": ws / "runs" / "round-0001", "noise": noise}


def predict_json(runner: CliRunner, *args: object) -> list[dict]:
    result = invoke(runner, "predict", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_the_round_records_its_reference_and_holdout_calibration(lab: dict) -> None:
    meta = json.loads((lab["run"] / OOD_JSON).read_text())
    assert meta["source"] == "holdout" and meta["calibration_rows"] == 15  # 5 a class
    assert meta["reference_rows"] == 15 and meta["quantile"] == 0.99 and meta["k"] == 5
    assert meta["pools"]["holdout"]["flagged"] == 0  # the 0.99 quantile of 15 is their maximum
    assert len(meta["review"]) == 4  # the round's review batch (budget 4)


def test_predict_scores_like_the_round_did(lab: dict) -> None:
    """The Predictor's embeddings are the round's: the review cells' scores match ood.json's."""
    meta = json.loads((lab["run"] / OOD_JSON).read_text())
    with PoolStore(lab["ws"] / "pools" / "pools.db", read_only=True) as store:
        paths = {s.id: s.path for s in store.samples("review")}
    ids = sorted(meta["review"])
    preds = Predictor(lab["run"]).predict([paths[i] for i in ids])
    assert [p.ood_score for p in preds] == pytest.approx([meta["review"][i] for i in ids], abs=1e-4)


def test_a_training_like_cell_is_known_and_noise_is_unknown(lab: dict, runner) -> None:
    known, noise = predict_json(runner, lab["cells"] / "L1" / "L1_00000.png", lab["noise"],
                                "-w", lab["ws"])
    assert known["ood"] is False and known["verdict"] == known["class"]
    assert noise["ood"] is True and noise["verdict"] == "unknown"
    assert noise["class"] in ("L1", "L2", "L3")  # the guess stays visible
    threshold = json.loads((lab["run"] / OOD_JSON).read_text())["threshold"]
    assert known["ood_score"] <= threshold < noise["ood_score"]
    table = invoke(runner, "predict", lab["noise"], "-w", lab["ws"])
    assert table.exit_code == 0
    words = table.stdout.split()  # the cell "unknown (guess L3)" wraps in a narrow table
    assert {"unknown", "(guess", f"{noise['class']})"} <= set(words)
    assert "farther from the training cells than 99% of the holdout" in table.stdout


def test_the_configured_quantile_applies_without_a_new_round(lab: dict, runner,
                                                             tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(lab["ws"], ws)
    config = ws / "sslall.toml"
    config.write_text(config.read_text() + "\n[ood]\nquantile = 0.5\n")
    rows = predict_json(runner, lab["cells"] / "holdout.csv", "-w", ws)
    flagged = sum(r["ood"] for r in rows)
    assert 4 <= flagged <= 8  # about half of the 15 holdout cells (ties at the median aside)


def test_evaluate_counts_the_flagged_images_and_scores_without_them(lab: dict, runner,
                                                                    tmp_path: Path) -> None:
    test = tmp_path / "test"
    for c in ("L1", "L2", "L3"):
        (test / c).mkdir(parents=True)
        for f in sorted((lab["cells"] / c).glob("*.png"))[-3:]:
            shutil.copy(f, test / c / f.name)
    shutil.copy(lab["noise"], test / "L2" / "noise.png")
    result = invoke(runner, "evaluate", test, "-w", lab["ws"], "--json")
    assert result.exit_code == 0, result.stderr
    ood = json.loads(result.stdout)["ood"]
    assert ood["flagged"] >= 1 and ood["kept"]["images"] == 10 - ood["flagged"]
    text = invoke(runner, "evaluate", test, "-w", lab["ws"])
    assert f"{ood['flagged']} of the 10 images flagged out of distribution" in text.stdout


def test_a_round_folder_without_ood_files_answers_null(lab: dict, runner, tmp_path: Path) -> None:
    old = tmp_path / "round-0001"
    shutil.copytree(lab["run"], old)
    (old / OOD_NPZ).unlink()
    (old / OOD_JSON).unlink()
    [row] = predict_json(runner, lab["noise"], "--checkpoint", old, "-w", lab["ws"])
    assert row["ood"] is None and row["ood_score"] is None and row["verdict"] == row["class"]
    table = invoke(runner, "predict", lab["noise"], "--checkpoint", old, "-w", lab["ws"])
    assert table.exit_code == 0 and "out-of-distribution cells are not flagged" in table.stdout


def test_damaged_ood_files_are_one_line(lab: dict, runner, tmp_path: Path) -> None:
    bad = tmp_path / "round-0001"
    shutil.copytree(lab["run"], bad)
    (bad / OOD_NPZ).write_bytes(b"garbage")
    result = invoke(runner, "predict", lab["noise"], "--checkpoint", bad, "-w", lab["ws"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "OOD files" in result.stderr and "damaged" in result.stderr
