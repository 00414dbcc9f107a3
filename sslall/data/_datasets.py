"""Torch datasets, transforms and loaders for sslall.

Geometry: every pipeline resizes the shorter side to `image_size` (antialiased bilinear) and
centre-crops an `image_size` square. Aspect ratio is kept because a cell's shape is diagnostic
(a sickle or an elliptocyte must not be stretched round, nor a round cell squashed); single-cell
crops are near square, so the crop loses little, and fields lose only their long-side margins.

Training adds, in this order and each off when its value is 0 (or False): a random affine
(rotation in +-`rotation` degrees and scale in 1 +- `zoom`, one interpolation for both, done
before the crop so a field's corners hold real pixels; uncovered corners take the normalisation
mean, which the network sees as 0), horizontal and vertical flips, HED stain jitter, and
brightness/contrast jitter. With every augmentation off, `train_transform` returns exactly what
`eval_transform` does. All randomness comes from torch's generator, so `torch.manual_seed`
(or a DataLoader worker's seed) makes it repeatable.

Stain jitter (Tellez et al. 2018, with Ruifrok & Johnston's haematoxylin/eosin/DAB vectors):
RGB -> optical density (-ln I) -> HED by the inverse stain matrix; each channel becomes
h * alpha + beta with alpha ~ U(1 - s, 1 + s) and beta ~ U(-s, s) (beta in optical-density
units), then back to RGB. Blood smears are Romanowsky-stained (Wright, Giemsa, May-Grunwald),
not H&E, but the H and E vectors span the purple/pink axis those stains vary along.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from sslall._workers import fit_socket_folder, worker_started
from sslall.data._images import RGB_CONVERSION, load_rgb
from sslall.data._preprocess import make_preprocessor, preprocess_key

if TYPE_CHECKING:
    from sslall.config import AugmentConfig, PreprocessConfig

__all__ = [
    "HedJitter",
    "ImageDataset",
    "eval_transform",
    "hed_to_rgb",
    "make_loader",
    "rgb_to_hed",
    "train_transform",
    "transform_key",
]

log = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]

_EVAL_VERSION = "eval-v1"  # bump when the eval pipeline changes: it keys the feature cache
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_OD_EPS = 1e-6


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                   preprocess: PreprocessConfig | None = None) -> Transform:
    """PIL RGB image -> normalised float tensor [3, image_size, image_size], no randomness.

    `preprocess` (stain normalisation, CLAHE, cell masking; `sslall.data._preprocess`) runs first.
    """
    _check_geometry(image_size, mean, std)
    return _Pipeline([*_head(image_size, preprocess), v2.CenterCrop(image_size),
                      *_tail(mean, std)])


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], augment: AugmentConfig,
    preprocess: PreprocessConfig | None = None,
) -> Transform:
    """`eval_transform` plus the augmentations `augment` enables (see the module docstring)."""
    _check_geometry(image_size, mean, std)
    rotation, zoom = float(augment.rotation), float(augment.zoom)
    brightness, contrast = float(augment.brightness), float(augment.contrast)
    stain = float(augment.stain)
    for name, value, upper in (
        ("rotation", rotation, 180.0), ("zoom", zoom, 1.0), ("brightness", brightness, 1.0),
        ("contrast", contrast, 1.0), ("stain", stain, 1.0),
    ):
        if not 0.0 <= value < upper:
            raise ValueError(f"augment.{name} must be in [0, {upper:g}), got {value}")
    steps: list[Callable[..., Any]] = list(_head(image_size, preprocess))
    if rotation or zoom:
        steps.append(
            v2.RandomAffine(
                degrees=rotation,
                scale=(1.0 - zoom, 1.0 + zoom) if zoom else None,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=[float(m) for m in mean],
            )
        )
    steps.append(v2.CenterCrop(image_size))
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.vflip:
        steps.append(v2.RandomVerticalFlip())
    if stain:
        steps.append(HedJitter(stain))
    if brightness or contrast:
        steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
    steps.extend(_tail(mean, std))
    return _Pipeline(steps)


def transform_key(image_size: int, mean: Sequence[float], std: Sequence[float],
                  preprocess: PreprocessConfig | None = None) -> str:
    """A stable string naming the eval transform (and the RGB conversion and preprocessing)
    for cache keys; without preprocessing it is the key it always was."""
    _check_geometry(image_size, mean, std)
    nums = ",".join
    pre = preprocess_key(preprocess)
    return (
        f"{_EVAL_VERSION}/{RGB_CONVERSION}/shorter-side+centre-crop/size={int(image_size)}"
        f"/mean={nums(repr(float(m)) for m in mean)}/std={nums(repr(float(s)) for s in std)}"
        + ("" if pre == "none" else f"/preprocess={pre}")
    )


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> haematoxylin, eosin, DAB optical densities."""
    od = -torch.log(rgb.clamp_min(_OD_EPS))
    return torch.einsum("...chw,cd->...dhw", od, _matrix(_HED_FROM_RGB, od))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hed`, clamped to [0, 1]."""
    od = torch.einsum("...dhw,dc->...chw", hed, _matrix(_RGB_FROM_HED, hed))
    return torch.exp(-od).clamp(0.0, 1.0)


class HedJitter:
    """Random per-image stain jitter in HED space; `strength` s as in the module docstring."""

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"stain strength must be in [0, 1), got {strength}")
        self.strength = float(strength)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        s = self.strength
        alpha = 1.0 + (torch.rand(3) * 2.0 - 1.0) * s
        beta = (torch.rand(3) * 2.0 - 1.0) * s
        hed = rgb_to_hed(image.as_subclass(torch.Tensor))
        shape = (3, 1, 1)
        return hed_to_rgb(hed * alpha.view(shape).to(hed) + beta.view(shape).to(hed))

    def __repr__(self) -> str:
        return f"HedJitter(strength={self.strength})"


class ImageDataset(Dataset):
    """Images from file paths, decoded by `images.load_rgb`; item i is (tensor, i).

    A file that has become unreadable since the round verified it raises `UnreadableImage`.
    With `ids` (each path's sha256, as the round verified it) every image is decoded from the
    very bytes that were hashed, and a file whose bytes changed raises `ChangedFile`.
    """

    def __init__(self, paths: Sequence[str], transform: Transform, *, max_pixels: int,
                 ids: Sequence[str] | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.max_pixels = int(max_pixels)
        self.ids = None if ids is None else [str(i) for i in ids]
        if self.ids is not None and len(self.ids) != len(self.paths):
            raise ValueError(f"{len(self.ids)} ids for {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        image = load_rgb(self.paths[index], max_pixels=self.max_pixels,
                         sample_id=None if self.ids is None else self.ids[index])
        return self.transform(image), index


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    seed: int = 0,
    pin_memory: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with a seeded generator (repeatable order and worker seeds), pinned memory
    when CUDA is available, and persistent workers when `num_workers` > 0 (decoding in this
    process instead when no temp folder is short enough for the workers' sockets)."""
    if sampler is not None and shuffle:
        raise ValueError("give either shuffle=True or a sampler, not both")
    if num_workers > 0 and not fit_socket_folder():
        log.warning("no temp folder is short enough for worker sockets (set a shorter TMPDIR); "
                    "decoding images in the main process")
        num_workers = 0
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(_start_worker, os.getpid()) if num_workers > 0 else None,
        generator=generator,
        drop_last=drop_last,
    )


# --- implementation ---------------------------------------------------------------------


class _Pipeline:
    """v2.Compose that returns a plain tensor (not a tv_tensors.Image); picklable for workers."""

    def __init__(self, steps: Sequence[Callable[..., Any]]) -> None:
        self.compose = v2.Compose(list(steps))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.compose(image).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"_Pipeline({self.compose!r})"


def _head(image_size: int, preprocess: PreprocessConfig | None = None
          ) -> list[Callable[..., Any]]:
    # Preprocess the decoded image, resize while still uint8 (fields can be large), then float.
    pre = make_preprocessor(preprocess)
    return [
        *([pre] if pre is not None else []),
        v2.ToImage(),
        v2.Resize(image_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[Callable[..., Any]]:
    return [v2.Normalize([float(m) for m in mean], [float(s) for s in std])]


def _check_geometry(image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    if int(image_size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if any(float(s) <= 0.0 for s in std):
        raise ValueError(f"std values must be positive, got {tuple(std)}")


def _matrix(m: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(m, dtype=like.dtype, device=like.device)


def _start_worker(parent_pid: int, worker_id: int) -> None:
    """A DataLoader worker: close the parent's lock, die with the parent (`worker_started`),
    and seed numpy and random from torch's per-worker seed (torch's is already set)."""
    worker_started(parent_pid)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
