"""Tests for sslall.data._images: every kind of bad file, and the documented RGB conversion."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from sslall._fsutil import sha256_file
from sslall.data import _images as images
from sslall.data._images import ImageInfo, UnreadableImage, inspect_image, load_rgb

LIMIT = 50_000_000


def _save(path: Path, im: Image.Image, **kw: object) -> Path:
    im.save(path, **kw)
    return path


def _rgb_noise(w: int = 16, h: int = 16, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _header_only_png(width: int, height: int) -> bytes:
    """A tiny, well-formed-looking PNG whose IHDR declares width x height (RGB, 8-bit)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def _reason(path: Path, **kw: int) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as info:
        load_rgb(path, max_pixels=kw.get("max_pixels", LIMIT))
    err = info.value
    assert "\n" not in str(err)
    with pytest.raises(UnreadableImage) as again:  # inspect_image applies the same rules
        inspect_image(path, max_pixels=kw.get("max_pixels", LIMIT))
    assert again.value.reason == err.reason
    return err


# --- bad files ------------------------------------------------------------------------------


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    err = _reason(path)
    assert err.reason == "empty"
    assert str(err) == f"image '{path}' is empty (0 bytes)"


def test_truncated_jpeg_is_undecodable(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _rgb_noise(64, 64).save(buf, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    err = _reason(path)
    assert err.reason == "undecodable"
    assert "truncated" in str(err)


def test_truncated_png_is_undecodable(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _rgb_noise(32, 32).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:-30])
    assert _reason(path).reason == "undecodable"


def test_text_file_named_png_is_undecodable(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    err = _reason(path)
    assert err.reason == "undecodable"
    assert "not an image format" in str(err)


def test_eps_is_refused_without_running_ghostscript(tmp_path: Path) -> None:
    path = tmp_path / "x.eps"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    assert _reason(path).reason == "undecodable"


@pytest.mark.parametrize("where", ["ihdr-crc", "idat-crc", "idat-data"])
def test_png_with_bad_crc_or_data_is_undecodable(tmp_path: Path, where: str) -> None:
    raw = bytearray(_save(tmp_path / "ok.png", _rgb_noise()).read_bytes())
    idat = raw.find(b"IDAT")
    (length,) = struct.unpack(">I", raw[idat - 4 : idat])
    offset = {"ihdr-crc": 8 + 8 + 13, "idat-crc": idat + 4 + length, "idat-data": idat + 6}
    raw[offset[where]] ^= 0xFF
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(raw))
    err = _reason(path)
    assert err.reason == "undecodable"
    if where == "idat-crc":  # Pillow alone would decode this one
        assert "bad CRC" in str(err)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_header_only_png(100_000, 100_000))
    assert path.stat().st_size < 200
    before = Image.MAX_IMAGE_PIXELS
    err = _reason(path)
    assert err.reason == "too-large"
    assert str(err) == (
        f"image '{path}' declares 100000x100000 = 10,000,000,000 pixels, over the limit of "
        "50,000,000 (config data.max_pixels)"
    )
    assert before == Image.MAX_IMAGE_PIXELS  # Pillow's global is left as it was


def test_valid_image_over_a_small_limit_is_too_large(tmp_path: Path) -> None:
    path = _save(tmp_path / "ok.png", _rgb_noise(16, 16))
    err = _reason(path, max_pixels=100)
    assert err.reason == "too-large"
    assert "16x16 = 256 pixels, over the limit of 100" in str(err)
    assert load_rgb(path, max_pixels=256).size == (16, 16)


def test_our_limit_wins_over_a_stricter_pillow_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow would refuse > 1000
    path = _save(tmp_path / "ok.png", _rgb_noise(50, 50))
    assert load_rgb(path, max_pixels=10_000).size == (50, 50)
    assert Image.MAX_IMAGE_PIXELS == 500
    assert _reason(path, max_pixels=2_000).reason == "too-large"


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_tiny_images_are_too_small(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _save(tmp_path / "tiny.png", Image.new("RGB", size, (9, 9, 9)))
    err = _reason(path)
    assert err.reason == "too-small"
    assert f"{size[0]}x{size[1]} pixels, under the minimum of 8x8" in str(err)


def test_minimum_side_is_accepted(tmp_path: Path) -> None:
    path = _save(tmp_path / "eight.png", Image.new("RGB", (8, 8), (9, 9, 9)))
    assert inspect_image(path, max_pixels=LIMIT) == ImageInfo(8, 8, "RGB", "PNG")


def test_missing_file(tmp_path: Path) -> None:
    err = _reason(tmp_path / "nope.png")
    assert (err.reason, err.detail) == ("missing", "does not exist")


def test_dangling_symlink_is_missing(tmp_path: Path) -> None:
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "gone.png")
    err = _reason(link)
    assert (err.reason, err.detail) == ("missing", "is a dangling symlink")


def test_symlink_loop_is_missing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.symlink_to(b)
    b.symlink_to(a)
    err = _reason(a)
    assert (err.reason, err.detail) == ("missing", "is a symlink loop")


def test_good_symlink_is_followed(tmp_path: Path) -> None:
    target = _save(tmp_path / "real.png", _rgb_noise())
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert load_rgb(link, max_pixels=LIMIT).size == (16, 16)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    err = _reason(folder)
    assert err.reason == "not-a-file"
    assert "is a directory" in str(err)


def test_fifo_is_not_a_file_and_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert _reason(fifo).reason == "not-a-file"


def test_permission_denied_is_undecodable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # We run as root, where chmod 000 does not stop reads; simulate the kernel's refusal.
    path = _save(tmp_path / "locked.png", _rgb_noise())

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open_regular", refuse)
    err = _reason(path)
    assert err.reason == "undecodable"
    assert "Permission denied" in str(err)


def test_error_names_the_file_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad\nname.png"
    path.write_bytes(b"")
    err = _reason(path)
    assert repr(str(path)) in str(err)


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown UnreadableImage reason"):
        UnreadableImage("x.png", "sad", "is sad")


# --- conversion -----------------------------------------------------------------------------


def _pixels(path: Path) -> np.ndarray:
    rgb = load_rgb(path, max_pixels=LIMIT)
    assert rgb.mode == "RGB"
    return np.asarray(rgb)


def _gray_row(values: list[int], dtype: str) -> np.ndarray:
    return np.tile(np.array(values * 2, dtype=dtype), (8, 1))


@pytest.mark.parametrize(("suffix", "dtype", "mode"), [
    (".png", "uint16", "I;16"), (".tif", "uint16", "I;16"), (".tif", ">u2", "I;16B"),
])
def test_16_bit_gray_is_scaled_not_clipped(
    tmp_path: Path, suffix: str, dtype: str, mode: str
) -> None:
    im = Image.fromarray(_gray_row([0, 32768, 65535, 257], dtype))
    path = _save(tmp_path / f"g16{suffix}", im)
    assert inspect_image(path, max_pixels=LIMIT).mode == mode
    px = _pixels(path)
    assert px[0, :4, 0].tolist() == [0, 128, 255, 1]
    assert (px[..., 0] == px[..., 1]).all()
    assert (px[..., 1] == px[..., 2]).all()


def test_32_bit_integer_is_clipped_to_16_bits_then_scaled(tmp_path: Path) -> None:
    path = _save(tmp_path / "i32.tif", Image.fromarray(_gray_row([-5, 70000, 65535, 0], "int32")))
    assert _pixels(path)[0, :4, 1].tolist() == [0, 255, 255, 0]


@pytest.mark.parametrize(("values", "expected"), [
    ([0.0, 0.5, 1.0, -0.25], [0, 128, 255, 0]),          # max <= 1: clip to [0, 1], times 255
    ([1000.0, 1500.0, 2000.0, 1000.0], [0, 128, 255, 0]),  # otherwise min-max
])
def test_float_images(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    path = _save(tmp_path / "f.tif", Image.fromarray(_gray_row(values, "float32")))
    assert _pixels(path)[0, :4, 2].tolist() == expected


def test_8_bit_and_1_bit_gray_are_replicated(tmp_path: Path) -> None:
    gray = _save(tmp_path / "l.png", Image.new("L", (8, 8), 77))
    assert (_pixels(gray) == 77).all()
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((3, 3), 1)
    px = _pixels(_save(tmp_path / "one.png", bits))
    assert px[3, 3].tolist() == [255, 255, 255]
    assert px[0, 0].tolist() == [0, 0, 0]


def _palette_image() -> Image.Image:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([200, 10, 20, 5, 250, 6] + [0] * (254 * 3))
    im.putpixel((1, 1), 1)
    return im


def test_palette_without_transparency(tmp_path: Path) -> None:
    px = _pixels(_save(tmp_path / "p.png", _palette_image()))
    assert px[0, 0].tolist() == [200, 10, 20]
    assert px[1, 1].tolist() == [5, 250, 6]


def test_palette_with_transparency_goes_onto_white(tmp_path: Path) -> None:
    px = _pixels(_save(tmp_path / "pt.png", _palette_image(), transparency=1))
    assert px[0, 0].tolist() == [200, 10, 20]
    assert px[1, 1].tolist() == [255, 255, 255]


def test_alpha_is_composited_onto_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    im.putpixel((0, 0), (255, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 128))
    px = _pixels(_save(tmp_path / "rgba.png", im))
    assert px[0, 0].tolist() == [255, 255, 255]
    assert px[0, 1].tolist() == [127, 127, 127]
    assert px[5, 5].tolist() == [0, 0, 255]
    la = Image.new("LA", (8, 8), (40, 0))
    assert (_pixels(_save(tmp_path / "la.png", la)) == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    im.paste((255, 0, 0, 0), (0, 0, 8, 16))
    path = _save(tmp_path / "cmyk.jpg", im, quality=95)
    assert inspect_image(path, max_pixels=LIMIT).mode == "CMYK"
    px = _pixels(path).astype(int)
    assert np.abs(px[8, 2] - [0, 255, 255]).max() <= 12
    assert np.abs(px[8, 13] - [255, 255, 255]).max() <= 12


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG"])
def test_lossless_rgb_formats_round_trip(tmp_path: Path, fmt: str) -> None:
    im = _rgb_noise(12, 9)
    path = _save(tmp_path / f"x.{fmt.lower()}", im, format=fmt)
    assert inspect_image(path, max_pixels=LIMIT) == ImageInfo(12, 9, "RGB", fmt)
    assert np.array_equal(_pixels(path), np.asarray(im))


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_lossless_webp(tmp_path: Path) -> None:
    im = _rgb_noise(12, 9)
    path = _save(tmp_path / "x.webp", im, lossless=True)
    assert np.array_equal(_pixels(path), np.asarray(im))


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_multi_frame_uses_the_first_frame(tmp_path: Path, suffix: str) -> None:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    path = _save(tmp_path / f"frames{suffix}", red, save_all=True, append_images=[blue])
    assert (_pixels(path) == [255, 0, 0]).all()


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (16, 8), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" in a viewer
    path = _save(tmp_path / "tagged.jpg", im, exif=exif)
    assert load_rgb(path, max_pixels=LIMIT).size == (16, 8)


def test_names_with_spaces_and_unicode(tmp_path: Path) -> None:
    path = _save(tmp_path / "a cell ünïcødé 血球 🩸.png", _rgb_noise())
    assert load_rgb(path, max_pixels=LIMIT).size == (16, 16)
    assert load_rgb(str(path), max_pixels=LIMIT).size == (16, 16)
    empty = tmp_path / "leer ü.png"
    empty.write_bytes(b"")
    assert f"'{empty}'" in str(_reason(empty))


def test_loaded_image_outlives_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png", _rgb_noise())
    rgb = load_rgb(path, max_pixels=LIMIT)
    path.unlink()
    assert rgb.tobytes() == _rgb_noise().tobytes()


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_suffixes_are_lowercase_with_dots() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"} <= images.IMAGE_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in images.IMAGE_SUFFIXES)


def test_module_imports_without_torch() -> None:
    code = "import sys, sslall.data._images; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
