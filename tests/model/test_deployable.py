"""Exported models (`sslall.model._export`): a timm backbone as ONNX (run in onnxruntime) and
TorchScript (run in torch) gives `Predictor`'s probabilities on images of other sizes and
modes prepared by the README's reference function; the metadata round-trips (onnx,
onnxruntime, the TorchScript archive); a model trained
with preprocessing carries its spec; without onnx the export says how to install it."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CLASSES, make_checkpoint, readme_prepare
from PIL import Image

from sslall.errors import ModelError, UsageError
from sslall.model._checkpoints import load_checkpoint, save_checkpoint
from sslall.model._export import (
    ONNX_INSTALL_HINT,
    export_checkpoint,
    export_metadata,
    read_export_metadata,
)
from sslall.model._inference import Predictor

SIZE = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Pictures that need resizing, cropping and the RGB rule: RGB, gray, RGBA, 16-bit."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    pictures = {
        "wide.png": Image.fromarray(rng.integers(0, 256, (41, 67, 3), dtype=np.uint8)),
        "tall.jpg": Image.fromarray(rng.integers(0, 256, (90, 37, 3), dtype=np.uint8)),
        "small.png": Image.fromarray(rng.integers(0, 256, (20, 25, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)),
        "alpha.png": Image.fromarray(rng.integers(0, 256, (40, 36, 4), dtype=np.uint8)),
        "deep.png": Image.fromarray(rng.integers(0, 65536, (50, 44), dtype=np.uint16)),
    }
    for name, picture in pictures.items():
        picture.save(root / name)
    return [root / name for name in pictures]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("resnet18"), "resnet18", SIZE)


def run_exported(path: Path, batch: np.ndarray) -> np.ndarray:
    """The exported file's probabilities, run the way README tells a server to run it."""
    if path.suffix == ".onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["probabilities"], {"image": batch})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates torch.jit
        model = torch.jit.load(str(path))
    return model(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("torchscript", "m.pt")])
def test_a_timm_model_exported_gives_predictors_probabilities(
        resnet: Path, images: list[Path], tmp_path: Path, fmt: str, name: str) -> None:
    expected = np.stack([p.probs for p in Predictor(resnet).predict(images)])
    result = export_checkpoint(resnet, fmt, tmp_path / name)
    assert result.bytes == (tmp_path / name).stat().st_size > 0
    prepare = readme_prepare()
    batch = np.stack([prepare(str(p), SIZE) for p in images])
    assert batch.dtype == np.uint8 and batch.shape == (len(images), SIZE, SIZE, 3)
    got = run_exported(tmp_path / name, batch)
    assert got.dtype == np.float32 and got.shape == (len(images), len(CLASSES))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run_exported(tmp_path / name, batch[:1]), expected[:1],
                               atol=1e-4, rtol=0)  # any batch size
    _, meta = load_checkpoint(resnet)
    stored = read_export_metadata(tmp_path / name)
    assert stored == json.loads(json.dumps(export_metadata(meta, fmt)))
    assert stored["classes"] == list(CLASSES) and stored["temperature"] == 1.5
    assert stored["image_size"] == SIZE and stored["backbone"] == "resnet18"
    assert stored["mean"] == pytest.approx(meta["mean"]) and stored["preprocess"] is None
    assert stored["input"] == {"name": "image", "dtype": "uint8", "shape": ["N", SIZE, SIZE, 3],
                               "layout": "NHWC", "channels": "RGB"}
    if fmt == "onnx":  # what a server sees: onnxruntime's metadata map and the graph's input
        session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
        assert json.loads(session.get_modelmeta().custom_metadata_map["sslall"]) == stored
        from_onnx = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
        assert json.loads(from_onnx["sslall"]) == stored and stored["onnx_opset"] == 18
        [graph_input] = session.get_inputs()
        assert graph_input.type == "tensor(uint8)" and graph_input.shape[1:] == [SIZE, SIZE, 3]


def test_a_turned_view_model_exports_the_mean_of_both_views(
        resnet: Path, images: list[Path], tmp_path: Path) -> None:
    turned = make_checkpoint(tmp_path / "turned", "resnet18", SIZE, turned_view=True)
    upright = np.stack([p.probs for p in Predictor(resnet).predict(images)])
    expected = np.stack([p.probs for p in Predictor(turned).predict(images)])
    assert np.abs(expected - upright).max() > 1e-3  # same weights: the second view is in play
    export_checkpoint(turned, "onnx", tmp_path / "m.onnx")
    batch = np.stack([readme_prepare()(str(p), SIZE) for p in images])
    np.testing.assert_allclose(run_exported(tmp_path / "m.onnx", batch), expected, atol=1e-4, rtol=0)


def test_a_model_with_preprocessing_carries_its_spec(tmp_path: Path) -> None:
    source = make_checkpoint(tmp_path / "plain", "baseline-cnn", SIZE)
    state, meta = load_checkpoint(source)
    steps = {"stain_norm": "reinhard", "clahe": True}
    save_checkpoint(tmp_path / "pre", state, {**meta, "preprocess": steps})
    result = export_checkpoint(tmp_path / "pre", "torchscript", tmp_path / "m.pt")
    stored = read_export_metadata(result.path)
    assert stored["preprocess"] == steps
    assert stored["preprocess_key"].startswith("stain=reinhard+clahe=")
    assert result.as_dict()["preprocess"] == stored["preprocess_key"]


def test_an_existing_file_is_kept_without_force(resnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="exists; pass --force"):
        export_checkpoint(resnet, "torchscript", out)
    assert out.read_bytes() == b"keep me"
    export_checkpoint(resnet, "torchscript", out, force=True)
    assert read_export_metadata(out)["backbone"] == "resnet18"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left


def test_onnx_export_without_onnx_says_how_to_install(resnet: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an environment without the extra
    with pytest.raises(ModelError) as info:
        export_checkpoint(resnet, "onnx", tmp_path / "m.onnx")
    assert str(info.value) == ONNX_INSTALL_HINT and "pip install 'sslall[export]'" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_a_file_that_is_no_export_is_one_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot read"):
        read_export_metadata(junk)
