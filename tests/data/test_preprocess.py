"""Preprocessing (stain normalisation, CLAHE, HSV cell masking): pixels, config, cache keys."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslall.config import Config, PreprocessConfig, config_from_dict, with_overrides
from sslall.data import _preprocess as pre
from sslall.data._datasets import eval_transform, transform_key
from sslall.data._synthetic import render_cell
from sslall.errors import ConfigError
from sslall.model._backbones import BASELINE_CNN, create_backbone
from sslall.model._feature_cache import FeatureCache
from sslall.model._features import extract_features
from sslall.model._inference import checkpoint_preprocess


def _cell(seed: int = 0, size: int = 64) -> np.ndarray:
    return np.asarray(render_cell(1, 3, np.random.default_rng(seed), size=size), dtype=np.uint8)


def _lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def _restain(rgb: np.ndarray, gain: tuple[float, float, float]) -> np.ndarray:
    """The same cell under another stain: optical densities scaled per channel."""
    od = -np.log((rgb.astype(np.float64) + 1) / 256)
    return np.clip(256 * np.exp(-od * np.array(gain)) - 1, 0, 255).astype(np.uint8)


def test_reinhard_moves_the_lab_statistics_to_the_target() -> None:
    out = pre.reinhard(_restain(_cell(), (1.4, 0.8, 1.1)))
    mean, std = _lab_stats(out)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_allclose(mean, pre.REINHARD_MEAN, atol=2.5)
    np.testing.assert_allclose(std, pre.REINHARD_STD, rtol=0.2)


def test_stain_normalisation_brings_two_stainings_of_one_cell_together() -> None:
    cell = _cell(size=96)
    a, b = _restain(cell, (1.5, 1.0, 0.8)), _restain(cell, (0.8, 1.2, 1.3))
    before = np.abs(a.astype(float) - b).mean()
    for method in (pre.reinhard, pre.macenko):
        after = np.abs(method(a).astype(float) - method(b)).mean()
        assert after < 0.6 * before, (method.__name__, before, after)


def test_macenko_leaves_an_unstained_image_alone() -> None:
    blank = np.full((32, 32, 3), 250, np.uint8)
    assert np.array_equal(pre.macenko(blank), blank)


def test_clahe_raises_local_contrast_and_keeps_the_size() -> None:
    flat = (_cell().astype(float) * 0.3 + 150).astype(np.uint8)  # a washed-out field
    out = pre.clahe(flat, clip=3.0, tiles=4)
    assert out.shape == flat.shape and out.dtype == np.uint8
    assert _lab_stats(out)[1][0] > 1.3 * _lab_stats(flat)[1][0]


def test_hsv_mask_keeps_the_stained_cell_and_whitens_the_background() -> None:
    img = np.full((48, 48, 3), (235, 230, 225), np.uint8)  # pale background
    yy, xx = np.mgrid[:48, :48]
    disc = (yy - 24) ** 2 + (xx - 24) ** 2 < 12 ** 2
    img[disc] = (120, 60, 160)  # a purple nucleus
    out = pre.mask_cells(img, saturation=0.3)
    assert (out[~disc & ((yy - 24) ** 2 + (xx - 24) ** 2 > 15 ** 2)] == 255).all()
    assert (out[(yy - 24) ** 2 + (xx - 24) ** 2 < 10 ** 2] == (120, 60, 160)).all()
    # a hue window that excludes purple keeps nothing, so the image is left as it is
    assert np.array_equal(pre.mask_cells(img, saturation=0.3, hue=(20.0, 90.0)), img)
    mean_bg = pre.mask_cells(img, saturation=0.3, background="mean")
    assert tuple(mean_bg[0, 0]) == (235, 230, 225)


def test_config_section_is_validated_and_names_the_allowed_values() -> None:
    cfg = config_from_dict({"classes": ["a", "b"], "preprocess": {"stain_norm": "macenko",
                                                                  "clahe": True}})
    assert cfg.preprocess.stain_norm == "macenko" and cfg.preprocess.clahe
    with pytest.raises(ConfigError, match="none, reinhard, macenko"):
        config_from_dict({"classes": ["a", "b"], "preprocess": {"stain_norm": "vahadane"}})
    with pytest.raises(ConfigError, match="preprocess.colour.*unknown key.*stain_norm"):
        config_from_dict({"classes": ["a", "b"], "preprocess": {"colour": 1}})
    with pytest.raises(ConfigError, match="preprocess.mask_saturation"):
        with_overrides(Config(classes=("a", "b")), preprocess={"mask_saturation": 1.5})


def test_the_transform_applies_it_and_the_cache_key_names_it(tmp_path: Path) -> None:
    off, on = PreprocessConfig(), PreprocessConfig(stain_norm="reinhard", mask=True)
    mean, std = (0.5,) * 3, (0.5,) * 3
    assert transform_key(32, mean, std, off) == transform_key(32, mean, std)  # old caches stay valid
    keys = {transform_key(32, mean, std, c) for c in (off, on, dataclasses.replace(on, mask=False),
                                                      dataclasses.replace(on, clahe=True))}
    assert len(keys) == 4
    image = Image.fromarray(_cell(size=32))
    expected = eval_transform(32, mean, std)(Image.fromarray(pre.mask_cells(pre.reinhard(_cell(
        size=32)))))
    assert torch.equal(eval_transform(32, mean, std, on)(image), expected)
    assert pickle.loads(pickle.dumps(pre.make_preprocessor(on))).cfg == on  # DataLoader workers
    assert pre.make_preprocessor(off) is None and pre.preprocess_key(off) == "none"

    path = tmp_path / "c.png"
    image.save(path)
    torch.manual_seed(0)
    backbone = create_backbone(BASELINE_CNN, pretrained=False)
    cache = FeatureCache(tmp_path / "cache")
    plain = extract_features(backbone, [("a" * 64, str(path))], image_size=32, cache=cache)
    masked = extract_features(backbone, [("a" * 64, str(path))], image_size=32, cache=cache,
                              preprocess=on)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # two feature sets, never mixed
    assert not np.allclose(plain, masked)


def test_a_checkpoint_remembers_its_preprocessing() -> None:
    cfg = PreprocessConfig(clahe=True, clahe_tiles=4)
    assert checkpoint_preprocess({"preprocess": dataclasses.asdict(cfg)}) == cfg
    assert checkpoint_preprocess({}) is None
