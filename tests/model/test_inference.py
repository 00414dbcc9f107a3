"""`Predictor`: file paths, PIL images and numpy arrays by one RGB rule, `device="auto"`, bad
input, and importing it where `fcntl` does not exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslall.errors import InputError
from sslall.model._backbones import BASELINE_CNN, Classifier, create_backbone
from sslall.model._checkpoints import save_checkpoint
from sslall.model._heads import MLPHead
from sslall.model._inference import Predictor

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["blast", "lymphocyte", "neutrophil"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of a randomly initialised 32-px baseline CNN (what a round writes)."""
    torch.manual_seed(0)
    bb = create_backbone(BASELINE_CNN, pretrained=False)
    model = Classifier(bb.module, MLPHead(bb.num_features, len(CLASSES), hidden=(8,)), bb.scales)
    meta = {"classes": CLASSES, "backbone": BASELINE_CNN, "image_size": 32, "mean": list(bb.mean),
            "std": list(bb.std), "temperature": 1.5, "round": 1, "feature_scales": 0}
    directory = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(directory, {k: v.detach() for k, v in model.state_dict().items()}, meta)
    return directory


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor(checkpoint)


def _rgb(seed: int, size: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _probs(predictor: Predictor, images: list) -> np.ndarray:
    preds = predictor.predict(images)
    assert [p.error for p in preds] == [None] * len(images)
    return np.stack([p.probs for p in preds])


def test_a_path_a_pil_image_and_an_array_of_one_picture_predict_the_same(
        predictor: Predictor, tmp_path: Path) -> None:
    pixels = _rgb(1)
    path = tmp_path / "cell.png"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as opened:
        preds = predictor.predict([path, str(path), opened, Image.fromarray(pixels), pixels])
    assert [p.path for p in preds] == [str(path), str(path), "<image 2>", "<image 3>", "<array 4>"]
    probs = np.stack([p.probs for p in preds])
    assert probs.shape == (5, len(CLASSES)) and np.allclose(probs.sum(1), 1)
    assert np.allclose(probs, probs[0], atol=1e-6)


def test_arrays_follow_the_one_rgb_rule(predictor: Predictor) -> None:
    gray = _rgb(2)[:, :, 0]
    as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    # gray is replicated; uint16 and [0, 1] floats are scaled to 0..255
    same_gray = [as_rgb, gray, gray[:, :, None], gray.astype(np.uint16) * 257,
                 gray.astype(np.float32) / 255, gray.astype(np.float64) / 255, Image.fromarray(gray)]
    probs = _probs(predictor, same_gray)
    assert np.allclose(probs, probs[0], atol=1e-6)
    # RGBA goes onto white: transparent pixels are white, opaque ones are kept
    colour = _rgb(3)
    white = np.full_like(colour, 255)
    transparent = np.dstack([colour, np.zeros(colour.shape[:2], np.uint8)])
    opaque = np.dstack([colour, np.full(colour.shape[:2], 255, np.uint8)])
    probs = _probs(predictor, [white, transparent, colour, opaque])
    assert np.allclose(probs[0], probs[1], atol=1e-6) and np.allclose(probs[2], probs[3], atol=1e-6)
    # channel order is RGB: a BGR array (a flipped view) is a different picture
    probs = _probs(predictor, [colour, colour[:, :, ::-1]])
    assert not np.allclose(probs[0], probs[1], atol=1e-6)


def test_unusable_pictures_get_an_error_in_place_as_files_do(predictor: Predictor, tmp_path: Path
                                                             ) -> None:
    tiny = _rgb(4, size=4)
    tiny_file = tmp_path / "tiny.png"
    Image.fromarray(tiny).save(tiny_file)
    corrupt = tmp_path / "corrupt.png"
    Image.fromarray(_rgb(5)).save(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # header intact, pixel data cut short
    with Image.open(corrupt) as broken:  # the caller's image: the caller closes it
        preds = predictor.predict([tmp_path / "missing.png", tiny_file, tiny, _rgb(6), broken],
                                  batch_size=1)
    assert [p.path for p in preds] == [str(tmp_path / "missing.png"), str(tiny_file), "<array 2>",
                                       "<array 3>", "<image 4>"]
    assert [p.probs is None for p in preds] == [True, True, True, False, True]
    assert preds[0].error.endswith("does not exist")
    # an in-memory picture is refused with the same words as a file of the same pixels
    assert preds[2].error == preds[1].error.replace(f"'{tiny_file}'", "'<array 2>'")
    assert preds[2].error == "image '<array 2>' is 4x4 pixels, under the minimum of 8x8"
    assert preds[4].error.startswith("image '<image 4>' cannot be decoded:")


@pytest.mark.parametrize("bad", [
    np.zeros((40, 40, 2), np.uint8), np.zeros((40, 40, 3), np.float32), np.zeros((40, 40), bool),
    np.zeros((40, 40, 3), np.int64), np.zeros(40, np.uint8), np.zeros((2, 40, 40, 3), np.uint8),
])
def test_an_array_of_another_shape_or_dtype_raises_before_predicting(predictor: Predictor,
                                                                     bad: np.ndarray) -> None:
    with pytest.raises(InputError, match=rf"^array 1 has shape {re.escape(str(bad.shape))} and dtype "
                                         rf"{bad.dtype}; Predictor takes"):
        predictor.predict([_rgb(7), bad])


@pytest.mark.parametrize("bad", [None, b"cell.png", [[0, 0], [0, 0]], 3])
def test_an_input_that_is_no_image_raises(predictor: Predictor, bad: object) -> None:
    with pytest.raises(InputError, match=rf"^input 0 is a {type(bad).__name__}; Predictor takes"):
        predictor.predict([bad])


def test_order_is_kept_across_batches_and_for_repeated_paths(predictor: Predictor, tmp_path: Path
                                                             ) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_rgb(10 + i)).save(paths[-1])
    images = [paths[0], paths[1], paths[0], _rgb(12), paths[2]]
    one_by_one = predictor.predict(images, batch_size=1)
    together = predictor.predict(images)
    assert [p.path for p in one_by_one] == [str(paths[0]), str(paths[1]), str(paths[0]), "<array 3>",
                                            str(paths[2])]
    assert [p.path for p in together] == [p.path for p in one_by_one]
    assert np.allclose(np.stack([p.probs for p in one_by_one]), np.stack([p.probs for p in together]),
                       atol=1e-5)
    assert np.allclose(one_by_one[0].probs, one_by_one[2].probs)
    assert np.allclose(one_by_one[3].probs, one_by_one[4].probs, atol=1e-6)  # same pixels as 2.png


def test_device_auto_picks_cuda_when_available_else_cpu(checkpoint: Path) -> None:
    predictor = Predictor(str(checkpoint), device="auto")
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    [pred] = predictor.predict([_rgb(8)])
    assert pred.error is None and pred.probs.shape == (len(CLASSES),)


def test_predictor_imports_where_fcntl_does_not_exist(checkpoint: Path) -> None:
    code = (
        "import sys, pathlib\n"
        "sys.modules['fcntl'] = None  # `import fcntl` now raises ImportError, as on Windows\n"
        "from sslall.model._inference import Predictor\n"
        "from sslall.workspace import Workspace, round_lock\n"
        "from sslall.errors import SslallError\n"
        f"print(Predictor(pathlib.Path({str(checkpoint)!r})).classes)\n"
        f"try:\n    round_lock(Workspace(pathlib.Path({str(checkpoint)!r}))).__enter__()\n"
        "except SslallError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    classes, refusal = done.stdout.strip().splitlines()
    assert classes == str(CLASSES)
    assert refusal.startswith("the round lock needs fcntl.flock, which this platform lacks")
