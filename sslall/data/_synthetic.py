"""Procedural stained peripheral-blood-smear images, for tests, demos and simulations.

Each image shows one white blood cell, roughly centred, among pink erythrocytes with a pale
centre on a light background. Rendering follows a Beer-Lambert stain model: every structure
adds optical density along a stain colour vector and a pixel is ``light * exp(-density)``.

Class ``i`` gets a morphology archetype from its index: 0 ~ FAB L1 (small, scant cytoplasm,
round dark homogeneous nucleus), 1 ~ L2 (larger, cleft irregular nucleus, nucleoli, more
cytoplasm), 2 ~ L3 (deep blue vacuolated cytoplasm), then neutrophil-, monocyte-, eosinophil-,
lymphocyte-, plasma-cell-, basophil- and myeloblast-like cells; higher indices get seeded
random archetypes. ``difficulty`` in [0, 1] pulls the class archetypes together, mixes each
cell partly toward another class's archetype, widens the per-image spread and adds stain,
illumination, blur and pixel noise.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["SyntheticSample", "render_cell", "write_dataset"]

# Morphology parameters, one column each; lengths are fractions of the image size.
_NAMES = ("cell_r", "nc", "irreg", "cleft", "lobes", "nucleoli", "vacuoles", "granules",
          "gran_kind", "baso", "cyto", "chrom", "texture", "ecc", "halo")
_I = {name: i for i, name in enumerate(_NAMES)}
_ARCHETYPES = np.array([
    # cell_r  nc  irreg cleft lobes nucl   vac  gran  gk  baso  cyto chrom  tex   ecc  halo
    [0.20, 0.86, 0.03, 0.00, 1, 0.2, 0.0, 0, 0, 0.45, 0.55, 1.25, 0.10, 0.10, 0.0],  # L1
    [0.30, 0.70, 0.14, 0.50, 1, 2.5, 0.5, 0, 0, 0.35, 0.50, 0.85, 0.30, 0.20, 0.0],  # L2
    [0.27, 0.68, 0.05, 0.00, 1, 1.5, 9.0, 0, 0, 1.00, 1.10, 0.95, 0.35, 0.15, 0.0],  # L3
    [0.26, 0.55, 0.05, 0.00, 3, 0.0, 0.0, 45, 0, 0.05, 0.40, 1.20, 0.20, 0.00, 0.0],  # neutrophil
    [0.33, 0.62, 0.15, 0.70, 1, 0.0, 3.0, 12, 0, 0.55, 0.45, 0.75, 0.40, 0.25, 0.0],  # monocyte
    [0.26, 0.55, 0.04, 0.00, 2, 0.0, 0.0, 55, 1, 0.00, 0.40, 1.10, 0.20, 0.00, 0.0],  # eosinophil
    [0.16, 0.92, 0.03, 0.05, 1, 0.0, 0.0, 0, 0, 0.60, 0.55, 1.45, 0.15, 0.05, 0.0],  # lymphocyte
    [0.24, 0.55, 0.04, 0.00, 1, 0.3, 1.0, 0, 0, 0.90, 0.95, 1.15, 0.45, 0.55, 1.0],  # plasma cell
    [0.23, 0.60, 0.10, 0.20, 2, 0.0, 0.0, 40, 2, 0.20, 0.40, 1.00, 0.20, 0.00, 0.0],  # basophil
    [0.31, 0.78, 0.06, 0.00, 1, 3.5, 0.0, 4, 0, 0.65, 0.60, 0.80, 0.15, 0.15, 0.0],  # myeloblast
], dtype=np.float64)
_LOW = _ARCHETYPES.min(axis=0)
_HIGH = _ARCHETYPES.max(axis=0)
_COUNTS = [_I[k] for k in ("nucleoli", "vacuoles", "granules")]

# Optical density per unit of stain (R, G, B absorbance).
_NUCLEUS = np.array([1.00, 1.55, 0.55], np.float32)   # azure/haematoxylin purple
_EOSIN = np.array([0.08, 0.60, 0.45], np.float32)     # erythrocyte pink-red
_CYTO_BLUE = np.array([0.85, 0.50, 0.12], np.float32)  # basophilic cytoplasm
_CYTO_PALE = np.array([0.10, 0.20, 0.12], np.float32)  # pale pink-lilac cytoplasm
_GRANULES = np.array([[0.30, 0.60, 0.20],   # neutrophilic lilac
                      [0.08, 0.65, 1.00],   # eosinophilic orange
                      [1.40, 1.80, 0.80]], np.float32)  # basophilic dark purple
_PLASMA = np.array([0.02, 0.05, 0.04], np.float32)     # faint background
_LIGHT = np.array([0.97, 0.955, 0.96], np.float32)
_FORMATS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
_SAFE_NAME = re.compile(r"^[^\W_][\w.\-]{0,99}$")


@dataclass(frozen=True)
class SyntheticSample:
    """One written image: its path, class label and patient id (None without patients)."""

    path: Path
    label: str
    patient: str | None


def render_cell(class_index: int, n_classes: int, rng: np.random.Generator, *,
                size: int = 64, difficulty: float = 0.5) -> Image.Image:
    """Draw one RGB smear image of a cell of class `class_index` (of `n_classes`)."""
    if n_classes < 1 or not 0 <= class_index < n_classes:
        raise ValueError(f"class_index must be in [0, {n_classes}), got {class_index}")
    _check_size_difficulty(size, difficulty)
    return _render(_sample_params(class_index, n_classes, rng, difficulty), rng, size,
                   difficulty, None)


def write_dataset(out: Path, classes: Sequence[str], n_per_class: int, *, size: int = 64,
                  seed: int = 0, difficulty: float = 0.5, patients: int = 0,
                  fmt: str = "png") -> list[SyntheticSample]:
    """Write `out/<class>/<class>_<i:05d>.<fmt>` images; with patients, also `out/manifest.csv`.

    Every image comes from its own seed derived from (seed, class index, image index), so an
    image does not depend on call order or `n_per_class` (it does depend on the number of
    classes, which sets how classes overlap). With `patients`, each image gets a patient
    uniformly at random, and each patient has its own stain and illumination offset.

    Raises:
        ValueError: empty, duplicate or unsafe class names, or an out-of-range argument.
    """
    classes = list(classes)
    if not classes:
        raise ValueError("classes must not be empty")
    for name in classes:
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name == "manifest.csv":
            raise ValueError(f"class name {name!r} is not a safe folder name "
                             "(letters, digits, '_', '.', '-', starting with a letter or digit)")
    folded = [name.casefold() for name in classes]
    if len(set(folded)) != len(folded):
        dupes = sorted({c for c, f in zip(classes, folded, strict=True) if folded.count(f) > 1})
        raise ValueError(f"duplicate class names (case-insensitive): {', '.join(dupes)}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    _check_size_difficulty(size, difficulty)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    fmt = fmt.lower()
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}, got {fmt!r}")

    out = Path(out)
    shifts = [_patient_shift(np.random.default_rng([seed, 2, p, 0])) for p in range(patients)]
    samples: list[SyntheticSample] = []
    for c, name in enumerate(classes):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            patient, shift = None, None
            if patients:
                p = int(np.random.default_rng([seed, 1, c, i]).integers(patients))
                patient, shift = f"P{p:03d}", shifts[p]
            rng = np.random.default_rng([seed, 0, c, i])
            params = _sample_params(c, len(classes), rng, difficulty)
            image = _render(params, rng, size, difficulty, shift)
            path = out / name / f"{name}_{i:05d}.{fmt}"
            image.save(path, **({"quality": 95} if fmt in ("jpg", "jpeg") else {}))
            samples.append(SyntheticSample(path, name, patient))
    if patients:
        with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "patient"])
            for s in samples:
                writer.writerow([s.path.relative_to(out).as_posix(), s.label, s.patient])
    return samples


def _check_size_difficulty(size: int, difficulty: float) -> None:
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")


def _archetype(index: int) -> np.ndarray:
    """The mean parameter vector of class `index`; beyond the table, a seeded random one."""
    if index < len(_ARCHETYPES):
        return _ARCHETYPES[index]
    p = _LOW + (_HIGH - _LOW) * np.random.default_rng([index, 99]).random(len(_NAMES))
    p[_I["lobes"]] = np.round(p[_I["lobes"]])
    return p


def _sample_params(c: int, n: int, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Per-image parameters: the class archetype, shrunk toward the others, mixed and jittered."""
    means = np.stack([_archetype(k) for k in range(n)])
    p = means[c] + 0.25 * difficulty * (means.mean(axis=0) - means[c])
    if n > 1:
        other = (c + 1 + int(rng.integers(n - 1))) % n
        w = 0.8 * difficulty * rng.beta(1.2, 3.0)
        p = p + w * (means[other] - means[c])
    p = p + rng.normal(0.0, 0.03 + 0.08 * difficulty, len(p)) * (_HIGH - _LOW)
    p = np.clip(p, _LOW - 0.05 * (_HIGH - _LOW), _HIGH + 0.05 * (_HIGH - _LOW))
    p[_COUNTS] = rng.poisson(np.maximum(p[_COUNTS], 0.0))
    p[_I["lobes"]] = np.floor(p[_I["lobes"]] + rng.random())  # stochastic rounding
    return p


def _patient_shift(rng: np.random.Generator) -> np.ndarray:
    """Log-factors for the four stain vectors and the light (rows), per patient."""
    shift = rng.normal(0.0, 0.12, (5, 3))
    shift[4] *= 0.15  # the light: a slight tint only
    return shift


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise with about unit spread: a `cells`-square random grid, bicubic-upsampled."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))


def _soft(radius: np.ndarray | float, rho: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-mask of a distance field: 1 inside, 0 outside, 1-pixel ramp."""
    return np.clip(radius - rho + 0.5, 0.0, 1.0)


def _blob(dx: np.ndarray, dy: np.ndarray, r: float, irreg: float,
          rng: np.random.Generator) -> np.ndarray:
    """A disc whose radius wobbles with low-frequency angular noise of relative size `irreg`."""
    theta = np.arctan2(dy, dx)
    wobble = np.zeros_like(theta)
    for k in range(2, 6):
        wobble += rng.normal(0.0, 1.0 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return _soft(r * (1.0 + irreg * wobble), np.hypot(dx, dy))


def _disc(xx: np.ndarray, yy: np.ndarray, x: float, y: float, r: float) -> np.ndarray:
    return _soft(r, np.hypot(xx - x, yy - y))


def _segment(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray,
             r: float) -> np.ndarray:
    """A capsule of radius `r` around the segment a-b."""
    ab = b - a
    t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(ab @ ab, 1e-6), 0.0, 1.0)
    return _soft(r, np.hypot(xx - a[0] - t * ab[0], yy - a[1] - t * ab[1]))


def _in_disc(rng: np.random.Generator, cx: float, cy: float, r: float, k: int) -> np.ndarray:
    """`k` points uniform in a disc, as an array [k, 2] of (x, y)."""
    rad = r * np.sqrt(rng.random(k))
    ang = rng.uniform(0, 2 * np.pi, k)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def _nucleus(p: np.ndarray, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float,
             big_r: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """The nucleus mask, the centres of its lobes and its (lobe) radius."""
    lobes = int(np.clip(p[_I["lobes"]], 1, 4))
    nc = float(np.clip(p[_I["nc"]], 0.35, 0.95))
    irreg = max(0.0, p[_I["irreg"]])
    phi = rng.uniform(0, 2 * np.pi)
    if lobes == 1:
        rn = nc * big_r
        off = np.clip(p[_I["ecc"]], 0, 0.8) * (big_r - rn)
        centres = np.array([[cx + off * np.cos(phi), cy + off * np.sin(phi)]])
        mask = _blob(xx - centres[0, 0], yy - centres[0, 1], rn, irreg, rng)
        cleft = float(np.clip(p[_I["cleft"]], 0, 0.8))
        if cleft > 0.05:  # a notch: narrow (L2-like cleft) to broad (monocyte-like kidney)
            rc, psi = rn * (0.12 + 0.5 * max(0.0, cleft - 0.45)), phi + rng.normal(0, 0.6)
            u = np.array([np.cos(psi), np.sin(psi)])
            a, b = centres[0] + 1.5 * rn * u, centres[0] + (1 + rc / rn - cleft) * rn * u
            mask = mask * (1 - _segment(xx, yy, a, b, rc))
        return mask, centres, rn
    rn = 0.52 * nc * big_r
    arc, step = 0.42 * big_r, 3.2 / lobes + 0.35
    angles = phi + (np.arange(lobes) - (lobes - 1) / 2) * step + rng.normal(0, 0.15, lobes)
    centres = np.stack([cx + arc * np.cos(angles), cy + arc * np.sin(angles)], axis=1)
    mask = np.zeros_like(xx)
    for j, (x, y) in enumerate(centres):
        lobe = _blob(xx - x, yy - y, rn * rng.uniform(0.85, 1.15), irreg, rng)
        mask = np.maximum(mask, lobe)
        if j:
            mask = np.maximum(mask, _segment(xx, yy, centres[j - 1], centres[j], 0.18 * rn))
    return mask, centres, rn


def _erythrocytes(rng: np.random.Generator, s: int, cx: float, cy: float,
                  big_r: float) -> np.ndarray:
    """Density of pale-centred pink discs, kept mostly clear of the white cell."""
    yy, xx = _grid(s)
    rbc = np.zeros((s, s), np.float32)
    todo = 2 + rng.poisson(4)
    for _ in range(4 * todo):
        if todo == 0:
            break
        r = s * rng.uniform(0.13, 0.17)
        x, y = (float(v) for v in rng.uniform(-0.1 * s, 1.1 * s, 2))
        if np.hypot(x - cx, y - cy) < big_r + 0.55 * r:
            continue
        todo -= 1
        e, a = rng.uniform(0, 0.12), rng.uniform(0, np.pi)
        pallor, density = rng.uniform(0.35, 0.65), rng.uniform(0.8, 1.1)
        # Draw only inside the disc's bounding box.
        x0, x1 = max(0, int(x - 1.2 * r)), min(s, int(x + 1.2 * r) + 2)
        y0, y1 = max(0, int(y - 1.2 * r)), min(s, int(y + 1.2 * r) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y
        u, v = dx * np.cos(a) + dy * np.sin(a), dy * np.cos(a) - dx * np.sin(a)
        rho = np.hypot(u / (1 + e), v / (1 - e))
        rbc[y0:y1, x0:x1] += (_soft(r, rho) * density
                              * (1 - pallor * np.exp(-((rho / (0.5 * r)) ** 2))))
    return rbc


def _white_cell(p: np.ndarray, rng: np.random.Generator, s: int, cx: float, cy: float,
                big_r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nuclear, cytoplasmic and granule stain densities of the white cell."""
    yy, xx = _grid(s)
    dx, dy = xx - cx, yy - cy
    baso = float(np.clip(p[_I["baso"]], 0, 1))
    cell = _blob(dx, dy, big_r, 0.02 + 0.25 * max(0.0, p[_I["irreg"]]), rng)
    nuc, centres, rn = _nucleus(p, xx, yy, cx, cy, big_r, rng)
    edge = (dx * dx + dy * dy) / (big_r * big_r)  # basophilia deepens toward the rim
    cyto = cell * max(0.1, p[_I["cyto"]]) * (1 + 0.12 * _noise(rng, s, 6) + 0.35 * baso * edge)
    grain = 0.6 * _noise(rng, s, max(4, s // 4)) + 0.4 * _noise(rng, s, max(4, s // 2))
    tex = max(0.0, p[_I["texture"]])
    dna = nuc * max(0.3, p[_I["chrom"]]) * np.clip(1 + tex * grain, 0.3, None)
    nx, ny = (float(v) for v in centres[0])
    if p[_I["halo"]] > 0.05:  # a pale perinuclear zone (plasma-cell "hof")
        dist = max(1e-6, float(np.hypot(cx - nx, cy - ny)))
        hx, hy = nx + 0.9 * rn * (cx - nx) / dist, ny + 0.9 * rn * (cy - ny) / dist
        cyto *= 1 - 0.6 * min(1.0, p[_I["halo"]]) * _disc(xx, yy, hx, hy, 0.5 * rn)
    for x, y in _in_disc(rng, nx, ny, 0.55 * rn, int(p[_I["nucleoli"]])):
        m = _disc(xx, yy, x, y, max(0.6, 0.15 * rn * rng.uniform(0.8, 1.25)))
        dna *= 1 - 0.6 * m
        cyto += 0.4 * m * nuc
    for x, y in _in_disc(rng, cx, cy, 0.88 * big_r, int(p[_I["vacuoles"]])):
        m = _disc(xx, yy, x, y, max(0.6, 0.09 * big_r * rng.uniform(0.7, 1.4)))
        cyto *= 1 - 0.9 * m
        dna *= 1 - 0.6 * m
    gran = np.zeros_like(xx)
    pts = _in_disc(rng, cx, cy, 0.92 * big_r, int(p[_I["granules"]]))
    if len(pts):  # splat points, then a small blur
        ix = np.clip(pts[:, 0].astype(int), 0, s - 1)
        iy = np.clip(pts[:, 1].astype(int), 0, s - 1)
        np.add.at(gran, (iy, ix), rng.uniform(0.8, 1.4, len(pts)).astype(np.float32))
        gran = 0.5 * gran + 0.125 * (np.roll(gran, 1, 0) + np.roll(gran, -1, 0)
                                     + np.roll(gran, 1, 1) + np.roll(gran, -1, 1))
        gran *= cell * (1 - 0.5 * nuc) * (s / 64) ** 0.5
    return dna, cyto, gran


def _render(p: np.ndarray, rng: np.random.Generator, size: int, difficulty: float,
            shift: np.ndarray | None) -> Image.Image:
    """Draw the image for parameter vector `p`; `shift` is a patient's stain offset."""
    s, d = size, difficulty
    yy, xx = _grid(s)
    logf = rng.normal(0.0, 0.04 + 0.10 * d, (5, 3))
    logf[4] *= 0.2  # the light varies less in hue than the stains
    if shift is not None:
        logf = logf + shift
    f = np.exp(logf).astype(np.float32)
    baso = float(np.clip(p[_I["baso"]], 0, 1))
    cyto_v = baso * _CYTO_BLUE * f[2] + (1 - baso) * _CYTO_PALE * f[3]
    gk = float(np.clip(p[_I["gran_kind"]], 0, 2))
    g0 = int(min(gk, 1.0))
    gran_v = _GRANULES[g0] + (gk - g0) * (_GRANULES[g0 + 1] - _GRANULES[g0])

    cx, cy = (float(v) for v in s / 2 + rng.normal(0, 0.03 * s, 2))
    big_r = float(np.clip(p[_I["cell_r"]], 0.12, 0.42)) * s
    rbc = _erythrocytes(rng, s, cx, cy, big_r)
    plt = np.zeros_like(xx)  # platelets: occasional small purple specks
    for _ in range(rng.poisson(0.6)):
        x, y = (float(v) for v in rng.uniform(0, s, 2))
        if np.hypot(x - cx, y - cy) > big_r * 1.2:
            plt += 0.7 * _blob(xx - x, yy - y, s * rng.uniform(0.02, 0.04), 0.3, rng)
    dna, cyto, gran = _white_cell(p, rng, s, cx, cy, big_r)

    od = (_PLASMA + rbc[..., None] * (_EOSIN * f[1]) + (dna + plt)[..., None] * (_NUCLEUS * f[0])
          + cyto[..., None] * cyto_v + gran[..., None] * gran_v)
    od *= float(np.exp(rng.normal(0, 0.05 + 0.08 * d)))

    # Illumination: tinted light, a linear gradient and a vignette; then noise and blur.
    gx, gy = (float(v) for v in rng.normal(0, 0.03 + 0.10 * d, 2))
    vignette = rng.uniform(0, 0.04 + 0.10 * d) / (s * s / 2)
    light = (1 + gx * (xx / s - 0.5) + gy * (yy / s - 0.5)
             - vignette * ((xx - s / 2) ** 2 + (yy - s / 2) ** 2))
    light = light[..., None] * _LIGHT * f[4] * rng.uniform(0.93, 1.02)
    noise = rng.normal(0, 0.006 + 0.03 * d, (s, s, 3)).astype(np.float32)
    rgb = light * np.exp(-od) + noise
    img = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
    radius = rng.uniform(0.1, 0.4 + 0.9 * d) * s / 64
    return img.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.15 else img
