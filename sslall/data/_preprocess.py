"""Preprocessing from the blood-smear literature, applied to every image before the transforms.

Three optional steps, in this order (each off by default; `[preprocess]` in `sslall.toml`):

1. **Stain normalisation** (`stain_norm`): `reinhard` moves each image's per-channel mean and
   standard deviation in CIE L*a*b* to a fixed target (Reinhard et al. 2001); the target is the
   median over 200 all-taleqani fields (Wright-Giemsa, 224 px), so a bright yellow field and a
   dim purple one come out alike. `macenko` estimates the two stain vectors of each image from
   the optical densities of its stained pixels (Macenko et al. 2009) and re-renders the image
   with a reference stain matrix and reference maximal concentrations; an image with too few
   stained pixels is left as it is.
2. **CLAHE** (`clahe`): contrast-limited adaptive histogram equalisation of the L* channel
   (OpenCV's), `clahe_clip` the clip limit and `clahe_tiles` the tiles per side; colour is kept.
3. **HSV cell masking** (`mask`): as in the Taleqani paper's segmentation (Ghaderzadeh et al.
   2022), a pixel belongs to a stained cell when its HSV saturation reaches `mask_saturation`
   and its hue lies in [`mask_hue_low`, `mask_hue_high`] degrees; the mask is cleaned by a
   morphological opening and closing and everything else becomes white (`mask_background =
   "white"`) or the mean colour of the background (`"mean"`).

`Preprocessor` is a picklable callable PIL -> PIL (DataLoader workers), and `preprocess_key`
names the settings for the feature-cache key, so features of different preprocessing never mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from sslall.config import PreprocessConfig

__all__ = ["Preprocessor", "clahe", "hsv_cell_mask", "macenko", "make_preprocessor",
           "mask_cells", "preprocess_key", "reinhard"]

# Reinhard target: median per-image L*a*b* mean and std over 200 all-taleqani fields.
REINHARD_MEAN = (87.30, 1.35, -8.39)
REINHARD_STD = (12.12, 9.17, 14.71)
# Macenko reference stain matrix (columns: haematoxylin, eosin) and 99th-percentile
# concentrations, as in the reference implementations of Macenko et al. 2009.
MACENKO_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_MAX_C = np.array([1.9705, 1.0308])
_IO = 240.0  # transmitted light intensity
_OD_BETA = 0.15  # optical density below which a pixel is background
_ALPHA = 1.0  # percentile for the robust stain angles


def preprocess_key(cfg: PreprocessConfig | None) -> str:
    """'none' when every step is off, else a stable string of the settings that change pixels."""
    if cfg is None or not _active(cfg):
        return "none"
    parts = []
    if cfg.stain_norm != "none":
        parts.append(f"stain={cfg.stain_norm}")
    if cfg.clahe:
        parts.append(f"clahe={cfg.clahe_clip!r}x{cfg.clahe_tiles}")
    if cfg.mask:
        parts.append(f"mask=s{cfg.mask_saturation!r},h{cfg.mask_hue_low!r}-{cfg.mask_hue_high!r},"
                     f"{cfg.mask_background}")
    return "+".join(parts)


def make_preprocessor(cfg: PreprocessConfig | None) -> Preprocessor | None:
    """The callable for `cfg`, or None when it changes nothing."""
    return Preprocessor(cfg) if cfg is not None and _active(cfg) else None


class Preprocessor:
    """PIL RGB image -> PIL RGB image with the configured steps (see the module docstring)."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        cfg = self.cfg
        if cfg.stain_norm == "reinhard":
            rgb = reinhard(rgb)
        elif cfg.stain_norm == "macenko":
            rgb = macenko(rgb)
        if cfg.clahe:
            rgb = clahe(rgb, clip=cfg.clahe_clip, tiles=cfg.clahe_tiles)
        if cfg.mask:
            rgb = mask_cells(rgb, saturation=cfg.mask_saturation, hue=(cfg.mask_hue_low,
                             cfg.mask_hue_high), background=cfg.mask_background)
        return Image.fromarray(rgb)

    def __repr__(self) -> str:
        return f"Preprocessor({preprocess_key(self.cfg)})"


def reinhard(rgb: np.ndarray, mean: tuple[float, ...] = REINHARD_MEAN,
             std: tuple[float, ...] = REINHARD_STD) -> np.ndarray:
    """Match the image's L*a*b* channel means and stds to `mean` and `std` (uint8 RGB in/out)."""
    import cv2

    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    mu, sd = lab.mean(0), lab.std(0)
    out = (lab - mu) / np.maximum(sd, 1e-6) * np.asarray(std) + np.asarray(mean)
    out[:, 0] = np.clip(out[:, 0], 0, 100)
    back = cv2.cvtColor(out.reshape(rgb.shape).astype(np.float32), cv2.COLOR_LAB2RGB)
    return _to_uint8(back * 255.0)


def macenko(rgb: np.ndarray, ref: np.ndarray = MACENKO_REF, max_c: np.ndarray = MACENKO_MAX_C
            ) -> np.ndarray:
    """Re-render the image with the reference stains (Macenko et al. 2009); unchanged when
    fewer than 1 % of its pixels (or fewer than 10) are stained."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / _IO)
    tissue = od[(od >= _OD_BETA).any(axis=1)]  # any: Romanowsky nuclei pass blue light
    if len(tissue) < max(10, 0.01 * len(od)):
        return rgb
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    plane = vecs[:, 1:3]
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, _ALPHA), np.percentile(phi, 100 - _ALPHA)
    # eigenvectors come with either sign: stain vectors are optical densities, so positive
    v1, v2 = (_positive(plane @ np.array([np.cos(a), np.sin(a)])) for a in (lo, hi))
    # haematoxylin first: it absorbs red light more than eosin does
    stains = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    conc, *_ = np.linalg.lstsq(stains, od.T, rcond=None)
    top = np.percentile(conc, 99, axis=1)
    if not np.all(np.isfinite(top)) or np.any(top <= 1e-6):
        return rgb
    conc *= (max_c / top)[:, None]
    out = _IO * np.exp(-(ref @ conc)).T - 1.0
    return _to_uint8(out.reshape(rgb.shape))


def clahe(rgb: np.ndarray, *, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L* channel (OpenCV), colour kept (uint8 RGB in/out)."""
    import cv2

    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(tiles), int(tiles)))
    lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def hsv_cell_mask(rgb: np.ndarray, *, saturation: float = 0.2,
                  hue: tuple[float, float] = (0.0, 360.0)) -> np.ndarray:
    """Boolean [H, W]: stained pixels (saturation and hue thresholds), opened and closed."""
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    h, s = hsv[..., 0] * (360.0 / 256.0), hsv[..., 1] / 255.0
    lo, hi = hue
    in_hue = (h >= lo) & (h <= hi) if lo <= hi else (h >= lo) | (h <= hi)  # a window over 0
    mask = ((s >= saturation) & in_hue).astype(np.uint8)
    k = max(1, round(min(rgb.shape[:2]) / 64)) * 2 + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask.astype(bool)


def mask_cells(rgb: np.ndarray, *, saturation: float = 0.2, hue: tuple[float, float] = (0.0, 360.0),
               background: str = "white") -> np.ndarray:
    """Keep the stained cells (`hsv_cell_mask`); the rest becomes white or its own mean colour.
    An image where nothing passes the thresholds is left as it is."""
    mask = hsv_cell_mask(rgb, saturation=saturation, hue=hue)
    if not mask.any():
        return rgb
    out = rgb.copy()
    if background == "mean" and (~mask).any():
        fill = rgb[~mask].mean(axis=0)
    else:
        fill = np.array([255.0, 255.0, 255.0])
    out[~mask] = _to_uint8(fill)
    return out


def _positive(v: np.ndarray) -> np.ndarray:
    return -v if v.sum() < 0 else v


def _active(cfg: PreprocessConfig) -> bool:
    return cfg.stain_norm != "none" or bool(cfg.clahe) or bool(cfg.mask)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
