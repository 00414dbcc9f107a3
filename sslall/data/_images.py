"""Safe image decoding for sslall (numpy + Pillow only; importable without torch).

Every image sslall reads goes through `load_rgb` (or `inspect_image` at import time), so one
set of rules decides what is readable and how pixels become RGB.

What is refused (`UnreadableImage.reason`):
    missing      the path does not exist, is a dangling symlink or a symlink loop
    not-a-file   a directory, fifo, socket or device
    empty        a zero-byte file
    too-large    the header declares more than `max_pixels` pixels (config `data.max_pixels`);
                 checked before any pixel is decoded, so a decompression bomb costs nothing
    too-small    width or height under 8 pixels (`MIN_SIDE`): smaller is a thumbnail, an icon
                 or a crop gone wrong, never a usable cell or field
    undecodable  anything Pillow cannot identify or fully decode (truncated, corrupt, a bad
                 PNG CRC in a critical chunk, a text file named .png), or a file that cannot
                 be read at all (e.g. permission denied)

RGB conversion (one rule per source mode; `RGB_CONVERSION` names this version):
    RGB                      kept as is.
    1 (bilevel), L (8-bit)   gray replicated into R, G and B.
    I;16, I;16B, I;16L, I    16-bit integers scaled linearly 0..65535 -> 0..255 and rounded
                             (65535 -> 255, 32768 -> 128), not clipped at 255; 32-bit I is
                             first clipped to 0..65535.
    F (32-bit float)         if the maximum is at most 1: clipped to [0, 1] and times 255;
                             otherwise min-max scaled to 0..255; NaN and inf count as 0.
    P (palette)              through RGBA when the palette has a transparent entry, else RGB.
    RGBA, LA, PA, RGBa, La   alpha-composited onto a white background (an empty slide).
    CMYK, YCbCr, LAB, HSV,   Pillow's own `convert("RGB")`.
    RGBX and others
    multi-frame TIFF/GIF     the first frame only.
EXIF orientation is ignored on purpose: microscope images have no "up", cameras on microscopes
write arbitrary orientation tags, and sample ids are the sha256 of the file's bytes, so the
pixels a model sees must not depend on a tag that viewers apply inconsistently.

Formats: whatever Pillow reads (JPEG, PNG, BMP, TIFF, GIF, WebP, ...) except EPS, which Pillow
decodes by running Ghostscript in a subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sslall._fsutil import NotRegularFile, open_regular
from sslall.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_SIDE",
    "RGB_CONVERSION",
    "ChangedFile",
    "ImageInfo",
    "UnreadableImage",
    "inspect_image",
    "load_rgb",
    "open_image",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
)
MIN_SIDE = 8
RGB_CONVERSION = "rgb-v1"  # bump when the conversion above changes (part of feature-cache keys)

_CHUNK = 1 << 20
_REASONS = frozenset({"empty", "undecodable", "too-large", "missing", "not-a-file", "too-small"})
_DENIED_FORMATS = frozenset({"EPS"})
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
    ZeroDivisionError, struct.error, zlib.error,
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PILLOW_LIMIT_LOCK = threading.Lock()


class UnreadableImage(InputError):
    """A file that sslall will not use as an image; `reason` is a short code, str() one line."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        if reason not in _REASONS:
            raise ValueError(f"unknown UnreadableImage reason {reason!r}")
        self.path = str(path)
        self.reason = reason
        self.detail = " ".join(detail.split())
        super().__init__(f"image {_quote(self.path)} {self.detail}")


@dataclass(frozen=True)
class ImageInfo:
    """What `inspect_image` learned: the decoded size and Pillow's source mode and format."""

    width: int
    height: int
    mode: str
    format: str


def inspect_image(path: str | Path, *, max_pixels: int,
                  handle: BinaryIO | None = None) -> ImageInfo:
    """Decode `path` fully (and convert it to RGB) to prove it is usable; return its facts.

    With `handle` (a binary file already opened on `path`, e.g. the one its bytes were hashed
    from) the image is decoded from it, from its start, and `path` only names it.

    Raises:
        UnreadableImage: for every reason listed in the module docstring.
    """
    if handle is not None:
        handle.seek(0)
        info, _ = _decode_open(handle, path, max_pixels)
        return info
    with open_image(path) as fh:
        info, _ = _decode_open(fh, path, max_pixels)
    return info


def load_rgb(path: str | Path, *, max_pixels: int, sample_id: str | None = None) -> Image.Image:
    """Return the fully decoded image at `path` in mode RGB, by the module's one conversion.

    With `sample_id` (the sha256 a round verified) the file is read once, its bytes hashed and
    decoded from that one read, so a file edited since it was verified is never decoded under
    its old id.

    Raises:
        UnreadableImage: for every reason listed in the module docstring.
        ChangedFile: the bytes read do not hash to `sample_id`.
    """
    with open_image(path) as fh:
        if sample_id is None:
            _, rgb = _decode_open(fh, path, max_pixels)
            return rgb
        data = fh.read()
    if hashlib.sha256(data).hexdigest() != sample_id:
        raise ChangedFile(f"image {_quote(str(path))} changed since the round verified it "
                          f"(sample {sample_id})")
    _, rgb = _decode_open(io.BytesIO(data), path, max_pixels)
    return rgb


class ChangedFile(InputError):
    """A file whose bytes no longer hash to the sample id it was verified as.

    Built from its message alone, so that a DataLoader worker's copy is re-raised in the main
    process as this type.
    """


def open_image(path: str | Path) -> BinaryIO:
    """Open an image file for reading: a regular file only, never blocking on a fifo.

    Raises:
        UnreadableImage: missing, not a file, or unreadable (reasons as in the module docstring).
    """
    try:
        return open_regular(path)
    except NotRegularFile as e:
        raise UnreadableImage(path, "not-a-file", e.strerror) from None
    except FileNotFoundError:
        what = "is a dangling symlink" if os.path.islink(path) else "does not exist"
        raise UnreadableImage(path, "missing", what) from None
    except NotADirectoryError:
        raise UnreadableImage(path, "missing", "does not exist (a parent is a file)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnreadableImage(path, "missing", "is a symlink loop") from None
        raise UnreadableImage(path, "undecodable", f"cannot be read: {e.strerror}") from None


# --- implementation ---------------------------------------------------------------------


def _quote(name: str) -> str:
    return f"'{name}'" if name.isprintable() else repr(name)


def _decode_open(fh: BinaryIO, path: str | Path, max_pixels: int) -> tuple[ImageInfo, Image.Image]:
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    fh.seek(0, os.SEEK_END)
    if fh.tell() == 0:
        raise UnreadableImage(path, "empty", "is empty (0 bytes)")
    fh.seek(0)
    im = _open(fh, path)
    width, height = im.size
    pixels = width * height
    if pixels > max_pixels:
        raise UnreadableImage(
            path, "too-large",
            f"declares {width}x{height} = {pixels:,} pixels, over the limit of "
            f"{max_pixels:,} (config data.max_pixels)",
        )
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(
            path, "too-small",
            f"is {width}x{height} pixels, under the minimum of {MIN_SIDE}x{MIN_SIDE}",
        )
    info = ImageInfo(width, height, im.mode, im.format or "")
    try:
        if im.format == "PNG":
            _check_png_crcs(fh)
        with _pillow_limit(max_pixels):
            im.load()
        rgb = _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, "too-large", f"is too large to decode: {e}") from None
    except _DECODE_ERRORS as e:
        raise UnreadableImage(path, "undecodable", f"cannot be decoded: {e}") from None
    return info, rgb


def _open(fh: BinaryIO, path: str | Path) -> ImageFile.ImageFile:
    """Image.open (reads the header only); if Pillow's own bomb check fires, open again with it
    lifted, so that the caller can apply our limit and report the declared size."""
    Image.init()
    formats = tuple(f for f in Image.ID if f not in _DENIED_FORMATS)
    try:
        try:  # the common path leaves Pillow's global alone
            with _pillow_limit(None):
                return Image.open(fh, formats=formats)
        except Image.DecompressionBombError:
            fh.seek(0)
            with _pillow_limit(None, force=True):
                return Image.open(fh, formats=formats)
    except UnidentifiedImageError:
        raise UnreadableImage(
            path, "undecodable", "cannot be decoded: not an image format Pillow recognises"
        ) from None
    except _DECODE_ERRORS as e:
        raise UnreadableImage(path, "undecodable", f"cannot be decoded: {e}") from None


@contextlib.contextmanager
def _pillow_limit(limit: int | None, *, force: bool = False) -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning and, if needed, lift its MAX_IMAGE_PIXELS.

    Pillow raises above 2 * MAX_IMAGE_PIXELS. The global is set to `limit` (under a lock, and
    restored) only with `force` or when Pillow's bound is below `limit` (a config that allows
    larger images than Pillow does). Only a file that trips Pillow's own check (`force`, to
    read its declared size) ever makes the default config touch it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        current = Image.MAX_IMAGE_PIXELS
        if not force and (current is None or limit is None or 2 * current >= limit):
            yield
            return
        with _PILLOW_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = limit
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _check_png_crcs(fh: BinaryIO) -> None:
    """Verify the CRC of every critical PNG chunk, as libpng does (Pillow skips IDAT's)."""
    fh.seek(0)
    if fh.read(8) != _PNG_SIGNATURE:
        raise SyntaxError("not a PNG signature")
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise SyntaxError("PNG ends before its IEND chunk (truncated)")
        length, ctype = struct.unpack(">I4s", head)
        crc = zlib.crc32(ctype)
        left = length
        while left:
            block = fh.read(min(left, _CHUNK))
            if not block:
                raise SyntaxError(f"PNG chunk {ctype!r} is truncated")
            crc = zlib.crc32(block, crc)
            left -= len(block)
        stored = fh.read(4)
        if len(stored) < 4:
            raise SyntaxError(f"PNG chunk {ctype!r} is truncated")
        critical = ctype[:1].isupper()
        if critical and struct.unpack(">I", stored)[0] != crc:
            raise SyntaxError(f"PNG chunk {ctype.decode('latin-1')} has a bad CRC (corrupted)")
        if ctype == b"IEND":
            fh.seek(0)
            return


def _to_rgb(im: Image.Image) -> Image.Image:
    """Apply the module's one RGB conversion to a loaded image (always a new image)."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("1", "L"):
        return im.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64)
        arr = np.clip(arr, 0, 65535) * (255.0 / 65535.0)
        return _gray(arr)
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= 1.0:
            arr = np.clip(arr, 0.0, 1.0) * 255.0
        else:
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return _gray(arr)
    if mode == "P":
        if "transparency" in im.info:
            return _on_white(im.convert("RGBA"))
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(im.convert("RGBA"))
    return im.convert("RGB")


def _gray(arr: np.ndarray) -> Image.Image:
    """float array in [0, 255] -> RGB image with the gray replicated."""
    gray = np.rint(np.clip(arr, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))  # HxWx3 uint8 -> RGB


def _on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
