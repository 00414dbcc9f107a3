"""Grad-CAM overlays (`sslall explain`) for a CNN, a ViT and the baseline CNN, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, invoke, make_checkpoint, write_image
from PIL import Image

from sslall.model._backbones import BASELINE_CNN
from sslall.report._gradcam import Explainer, target_layer


@pytest.mark.parametrize(("backbone", "size", "layer", "turned"), [
    ("test_resnet", 64, "layer4", False), ("test_vit", 160, "blocks.5.norm1", False),
    (BASELINE_CNN, 32, "features.12", False),
    (BASELINE_CNN, 32, "features.12", True),  # a last-stage model that averages two views
])
def test_overlays_for_cnn_vit_and_baseline(tmp_path: Path, backbone: str, size: int,
                                           layer: str, turned: bool) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", backbone, size, turned_view=turned)
    cell = write_image(tmp_path / "cell.png", 3, size=40)
    explainer = Explainer(ckpt)
    model = explainer.predictor.model
    assert target_layer(model.backbone)[0] is model.backbone.get_submodule(layer)
    [done] = explainer.explain([cell], tmp_path / "out")
    assert done.error is None and done.label in CLASSES and 0 < done.confidence <= 1
    picture = np.asarray(Image.open(done.out).convert("RGB"))
    side = max(224, size)
    assert picture.shape[1] == 2 * side and picture.shape[0] > side  # input | overlay, caption
    left, right = picture[:side, :side].astype(int), picture[:side, side:].astype(int)
    assert np.abs(left - right).mean() > 5  # the heat map is drawn over the image
    caption = picture[side:]
    assert (caption < 128).any()  # class and confidence are written under the pictures
    # the same prediction `sslall predict` makes (temperature-calibrated)
    pred = explainer.predictor.predict([cell])[0].probs
    assert done.label == CLASSES[int(pred.argmax())]
    assert done.confidence == pytest.approx(float(pred.max()), abs=1e-5)


def test_explain_command_defaults_to_the_latest_round_and_reports_unreadable(
        tmp_path: Path, runner, monkeypatch) -> None:
    ws = tmp_path / "ws"
    assert invoke(runner, "init", ws, "--classes", ",".join(CLASSES), "--backbone",
                  BASELINE_CNN, "--image-size", "32").exit_code == 0
    good = write_image(tmp_path / "a.png", 1)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    none_yet = invoke(runner, "explain", good, "--out", tmp_path / "o", "-w", ws)
    assert none_yet.exit_code == 3 and "no round has finished" in none_yet.output
    make_checkpoint(tmp_path / "ckpt", BASELINE_CNN, 32)
    result = invoke(runner, "explain", good, bad, "--out", tmp_path / "o", "--checkpoint",
                    tmp_path / "ckpt", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[: result.stdout.rindex("]") + 1])
    assert rows[0]["class"] in CLASSES and Path(rows[0]["overlay"]).is_file()
    assert rows[1]["overlay"] is None and rows[1]["error"]
    only_bad = invoke(runner, "explain", bad, "--out", tmp_path / "o2", "--checkpoint",
                      tmp_path / "ckpt")
    assert only_bad.exit_code == 2 and "no image could be read" in only_bad.output
