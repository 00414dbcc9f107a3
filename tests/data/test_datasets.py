"""Tests for sslall.data._datasets: transforms, stain jitter, dataset and loader (tiny synthetic images)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sslall.config import AugmentConfig
from sslall.data import _datasets as data
from sslall.data._images import UnreadableImage

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 24


def _aug(**on: float) -> SimpleNamespace:
    off = {"hflip": False, "vflip": False, "rotation": 0.0, "zoom": 0.0, "brightness": 0.0,
           "contrast": 0.0, "stain": 0.0}
    return SimpleNamespace(**{**off, **on})


def _noise(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def test_eval_transform_shape_dtype_and_normalisation() -> None:
    colour = (200, 100, 50)
    out = data.eval_transform(SIZE, MEAN, STD)(Image.new("RGB", (60, 35), colour))
    assert type(out) is torch.Tensor
    assert out.shape == (3, SIZE, SIZE)
    assert out.dtype == torch.float32
    expected = (torch.tensor(colour) / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[:, 5, 7], expected, atol=1e-5)


def test_eval_keeps_aspect_ratio_by_cropping_the_long_side() -> None:
    im = Image.new("RGB", (90, 30), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 25, 30))  # a blue left margin: the centre crop drops it
    out = data.eval_transform(SIZE, (0, 0, 0), (1, 1, 1))(im)
    assert torch.allclose(out[:, SIZE // 2, SIZE // 2], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out[0], torch.ones(SIZE, SIZE))


def test_disabled_augmentations_equal_eval() -> None:
    im = _noise()
    train = data.train_transform(SIZE, MEAN, STD, _aug())
    torch.manual_seed(3)
    assert torch.equal(train(im), data.eval_transform(SIZE, MEAN, STD)(im))


def test_train_transform_is_deterministic_under_a_seed() -> None:
    im = _noise()
    train = data.train_transform(SIZE, MEAN, STD, AugmentConfig())
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(train(im))
    assert outs[0].shape == (3, SIZE, SIZE)
    assert outs[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("on", [
    {"hflip": True}, {"vflip": True}, {"rotation": 30.0}, {"zoom": 0.3},
    {"brightness": 0.5}, {"contrast": 0.5}, {"stain": 0.2},
])
def test_each_augmentation_changes_something(on: dict[str, float]) -> None:
    im = _noise()
    base = data.eval_transform(SIZE, MEAN, STD)(im)
    train = data.train_transform(SIZE, MEAN, STD, _aug(**on))
    torch.manual_seed(0)
    outs = [train(im) for _ in range(6)]
    assert all(o.shape == base.shape for o in outs)
    assert any(not torch.allclose(o, base, atol=1e-4) for o in outs)


def test_rotation_fills_uncovered_corners_with_the_mean() -> None:
    train = data.train_transform(SIZE, MEAN, STD, _aug(rotation=45.0, zoom=0.5))
    torch.manual_seed(1)
    corners = [train(Image.new("RGB", (32, 32), (0, 0, 0)))[:, 0, 0] for _ in range(20)]
    # A zoomed-out or rotated square leaves at least one corner uncovered: it reads 0 after
    # normalisation (or in between, where bilinear interpolation blends edge and fill).
    assert any(torch.allclose(c, torch.zeros(3), atol=1e-5) for c in corners)


@pytest.mark.parametrize("bad", [{"zoom": 1.0}, {"rotation": -1.0}, {"stain": 1.5}])
def test_bad_augment_values_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=f"augment.{next(iter(bad))}"):
        data.train_transform(SIZE, MEAN, STD, _aug(**bad))


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="3 values"):
        data.eval_transform(SIZE, (0.5, 0.5), STD)
    with pytest.raises(ValueError, match="positive"):
        data.eval_transform(0, MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        data.eval_transform(SIZE, MEAN, (1.0, 0.0, 1.0))


def test_hed_round_trip() -> None:
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.99 + 0.01
    assert torch.allclose(data.hed_to_rgb(data.rgb_to_hed(rgb)), rgb, atol=1e-5)
    white = torch.ones(3, 4, 4)
    assert torch.allclose(data.rgb_to_hed(white), torch.zeros(3, 4, 4), atol=1e-6)


def test_hed_jitter_strength_zero_is_identity_and_small_strength_is_small() -> None:
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    assert torch.allclose(data.HedJitter(0.0)(img), img, atol=1e-5)
    torch.manual_seed(0)
    jittered = data.HedJitter(0.05)(img)
    assert not torch.allclose(jittered, img, atol=1e-4)
    assert (jittered - img).abs().max() < 0.25
    assert jittered.min() >= 0.0
    assert jittered.max() <= 1.0


def test_transform_key_is_stable_and_discriminating() -> None:
    key = data.transform_key(224, MEAN, STD)
    assert key == (
        "eval-v1/rgb-v1/shorter-side+centre-crop/size=224"
        "/mean=0.485,0.456,0.406/std=0.229,0.224,0.225"
    )
    assert data.transform_key(224, list(MEAN), np.array(STD)) == key
    assert data.transform_key(256, MEAN, STD) != key
    assert data.transform_key(224, (0.5, 0.5, 0.5), STD) != key


def _write_images(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = folder / f"cell {i}.png"
        Image.new("RGB", (20 + i, 16), (10 * i, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def test_image_dataset_and_loader(tmp_path: Path) -> None:
    paths = _write_images(tmp_path, 5)
    ds = data.ImageDataset(paths, data.eval_transform(SIZE, (0, 0, 0), (1, 1, 1)),
                           max_pixels=10_000)
    assert len(ds) == 5
    x, i = ds[np.int64(3)]
    assert type(i) is int
    assert i == 3
    assert x.shape == (3, SIZE, SIZE)
    assert x[0, 0, 0].item() == pytest.approx(30 / 255)
    loader = data.make_loader(ds, batch_size=2)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 1, 2, 3, 4]
    assert loader.pin_memory == torch.cuda.is_available()


def test_shuffled_loader_order_follows_the_seed(tmp_path: Path) -> None:
    ds = data.ImageDataset(_write_images(tmp_path, 6),
                           data.eval_transform(8, MEAN, STD), max_pixels=10_000)

    def order(seed: int) -> list[int]:
        loader = data.make_loader(ds, batch_size=6, shuffle=True, seed=seed)
        return next(iter(loader))[1].tolist()

    assert order(1) == order(1)
    assert sorted(order(1)) == list(range(6))
    assert any(order(1) != order(s) for s in (2, 3, 4))


def test_loader_options(tmp_path: Path) -> None:
    ds = data.ImageDataset(_write_images(tmp_path, 2), data.eval_transform(8, MEAN, STD),
                           max_pixels=10_000)
    loader = data.make_loader(ds, batch_size=1, num_workers=1, pin_memory=False)
    assert loader.persistent_workers
    assert not loader.pin_memory
    assert not data.make_loader(ds, batch_size=1).persistent_workers
    with pytest.raises(ValueError, match="not both"):
        data.make_loader(ds, batch_size=1, shuffle=True, sampler=range(2))


def test_dataset_raises_when_a_file_went_bad(tmp_path: Path) -> None:
    paths = _write_images(tmp_path, 2)
    Path(paths[1]).write_bytes(b"")
    ds = data.ImageDataset(paths, data.eval_transform(8, MEAN, STD), max_pixels=10_000)
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(UnreadableImage) as info:
        ds[1]
    assert info.value.reason == "empty"
