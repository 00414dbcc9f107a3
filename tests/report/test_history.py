"""Training history: each round's per-epoch curves in `runs/round-NNNN/history.json`, drawn
in the report; a round folder from before history was recorded still renders."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from conftest import invoke
from PIL import Image
from test_rounds import build_workspace

from sslall.report._data import HISTORY_FILE, read_history
from sslall.report._figures import training_curves


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory) -> Path:
    """A tiny workspace after a head-mode round (5 heads) and a last-stage round."""
    from typer.testing import CliRunner

    runner = CliRunner()
    ws = build_workspace(tmp_path_factory.mktemp("history"), runner)
    config = ws / "sslall.toml"
    config.write_text(config.read_text().replace("[route]", "[route]\nlabel_issue_folds = 0", 1))
    assert invoke(runner, "round", "-w", ws).exit_code == 0
    config.write_text(config.read_text().replace('mode = "head"', 'mode = "last-stage"'))
    result = invoke(runner, "round", "-w", ws)
    assert result.exit_code == 0, result.output
    return ws


def test_each_round_saves_every_models_epochs(two_rounds: Path) -> None:
    for round_no, names in ((1, [f"head-{k}" for k in range(1, 6)]), (2, ["last-stage"])):
        run = two_rounds / "runs" / f"round-{round_no:04d}"
        history = read_history(run)
        train = json.loads((run / "metrics.json").read_text())["train"]
        assert history["round"] == round_no and [m["model"] for m in history["models"]] == names
        assert history["mode"] == ("head" if round_no == 1 else "last-stage")
        assert [m["best_epoch"] for m in history["models"]] == train["best_epoch"]
        assert [len(m["epochs"]) for m in history["models"]] == train["epochs_run"]
        for model in history["models"]:
            assert [e["epoch"] for e in model["epochs"]] == list(range(1, len(model["epochs"]) + 1))
            assert 0 < sum(e["seconds"] for e in model["epochs"]) <= model["seconds"]
            for epoch in model["epochs"]:
                assert epoch["lr"] == 1e-3 and epoch["train_loss"] > 0 and epoch["val_loss"] > 0
                assert 0 <= epoch["val_macro_f1"] <= 1
            kept = model["epochs"][model["best_epoch"] - 1]
            assert kept["val_macro_f1"] == max(e["val_macro_f1"] for e in model["epochs"])


def _images(page: str) -> dict[str, Image.Image]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    return {alt: Image.open(io.BytesIO(base64.b64decode(data))) for alt, data in found}


def test_the_report_draws_the_latest_rounds_curves(two_rounds: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    out = tmp_path / "report.html"
    result = invoke(CliRunner(), "report", "-w", two_rounds, "--out", out, "--per-class", "1")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    section = page.split("<h2>Training curves, round 2</h2>", 1)[1].split("</section>", 1)[0]
    figure = _images(section)["training curves"]
    assert figure.format == "PNG" and figure.width > 400
    assert "<td>last-stage</td>" in section and "history.json" in section


def test_a_round_without_history_still_renders(two_rounds: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    ws = tmp_path / "ws"
    shutil.copytree(two_rounds, ws)
    (ws / "runs" / "round-0002" / HISTORY_FILE).unlink()
    out = tmp_path / "report.html"
    result = invoke(CliRunner(), "report", "-w", ws, "--out", out, "--per-class", "1")
    assert result.exit_code == 0, result.output
    section = out.read_text().split("<h2>Training curves, round 2</h2>", 1)[1].split("</section>", 1)[0]
    assert "no history recorded for this round" in section and "<img" not in section


def test_curves_without_a_holdout_draw_the_training_loss_alone() -> None:
    epochs = [{"epoch": e, "train_loss": 1.0 / e, "val_macro_f1": None, "val_loss": None,
               "lr": 1e-3, "seconds": 0.1} for e in range(1, 4)]
    png = training_curves([{"model": "finetune", "best_epoch": 3, "seconds": 0.3, "epochs": epochs}])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 400
