"""`sslall export`: a tiny round's model in use, as ONNX (run in onnxruntime) and TorchScript
(run in torch), gives the probabilities `sslall predict --json` prints for the same images
prepared by the README's reference function; `--round`, `--json` and the refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import CLASSES, invoke, readme_prepare
from PIL import Image
from test_rounds import build_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace after one tiny round (baseline-cnn, 32 px)."""
    from typer.testing import CliRunner

    runner = CliRunner()
    ws = build_workspace(tmp_path_factory.mktemp("export"), runner)
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.output
    return ws


@pytest.fixture(scope="module")
def predicted(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """`sslall predict --json`'s probabilities for some of the round's cells and for pictures
    that need resizing and the RGB rule, by path."""
    from typer.testing import CliRunner

    extra = tmp_path_factory.mktemp("extra")
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(extra / "wide.png")
    Image.fromarray(rng.integers(0, 256, (60, 60), dtype=np.uint8)).save(extra / "gray.png")
    cells = sorted((ws.parent / "cells").rglob("*.png"))[:6]
    result = invoke(CliRunner(), "predict", *cells, extra, "-w", ws, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 8
    return {r["path"]: np.array([r["probabilities"][c] for c in CLASSES]) for r in rows}


def run_exported(path: Path, batch: np.ndarray) -> np.ndarray:
    if path.suffix == ".onnx":
        return ort.InferenceSession(str(path)).run(None, {"image": batch})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates torch.jit
        return torch.jit.load(str(path))(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("fmt, name", [("onnx", "ward.onnx"), ("torchscript", "ward.pt")])
def test_export_matches_predict(ws: Path, predicted: dict, tmp_path: Path, runner, fmt: str,
                                name: str) -> None:
    out = tmp_path / name
    result = invoke(runner, "export", "--format", fmt, "--out", out, "-w", ws, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {"path": str(out), "format": fmt, "bytes": out.stat().st_size, "round": 1,
                       "classes": list(CLASSES), "preprocess": "none"}
    prepare = readme_prepare()
    paths = list(predicted)
    got = run_exported(out, np.stack([prepare(p, 32) for p in paths]))
    np.testing.assert_allclose(got, np.stack([predicted[p] for p in paths]), atol=1e-4, rtol=0)


def test_export_text_round_and_refusals(ws: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "r1.pt"
    result = invoke(runner, "export", "--round", "1", "--format", "torchscript", "--out", out,
                    "-w", ws)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (torchscript" in result.stdout and "from round 1" in result.stdout
    assert "uint8 [N, 32, 32, 3] RGB -> probabilities of L1, L2, L3" in result.stdout
    before = out.read_bytes()
    for args, code, words in (
        (["--format", "torchscript", "--out", out], 2, "exists; pass --force"),
        (["--format", "tflite", "--out", tmp_path / "m"], 2, "--format must be one of onnx, "
                                                          "torchscript"),
        (["--round", "7", "--format", "onnx", "--out", tmp_path / "m"], 3,
         "round 7 has no checkpoint"),
        (["--round", "1", "--checkpoint", ws / "runs", "--format", "onnx", "--out",
          tmp_path / "m"], 2, "--round or --checkpoint, not both"),
    ):
        result = invoke(runner, "export", *args, "-w", ws)
        assert result.exit_code == code, result.output
        assert words in result.stderr and "Traceback" not in result.output + result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before
    result = invoke(runner, "export", "--format", "torchscript", "--out", out, "--force",
                    "--checkpoint", ws / "runs" / "round-0001", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["round"] == 1
