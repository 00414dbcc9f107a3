"""Bad input made by the tests, through the CLI: each case gets one clear line (or a report
entry), the documented exit code, quarantine or refusal, and nothing else in the store changes.

One workspace for the module (3 classes of tiny synthetic cells, labels in every class), so the
whole matrix costs a few seconds; the last test trains a round on the odd but valid images.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, write_image
from PIL import Image
from test_rounds import build_workspace

from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    return build_workspace(tmp_path_factory.mktemp("bad-input"), CliRunner())


def status(runner, ws: Path) -> dict:
    result = invoke(runner, "status", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    return {"pools": data["pools"], "per_class": data["per_class"], "rounds": data["rounds"]}


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- images -----------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def truncated_jpeg(d: Path) -> None:
    write_image(d / "cut.jpg", 1, size=64, fmt="JPEG")
    data = (d / "cut.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])


def zero_byte(d: Path) -> None:
    (d / "empty.png").write_bytes(b"")


def text_named_png(d: Path) -> None:
    (d / "notes.png").write_text("these are not pixels\n")


def png_bad_crc(d: Path) -> None:
    data = bytearray(write_image(d / "crc.png", 2).read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF                     # one byte of the compressed pixels flipped
    (d / "crc.png").write_bytes(bytes(data))


def bomb(d: Path) -> None:
    """A valid PNG header declaring 100000 x 100000 pixels over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                                 + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def one_pixel(d: Path) -> None:
    Image.new("RGB", (1, 1), (200, 30, 90)).save(d / "dot.png")


def dangling_symlink(d: Path) -> None:
    (d / "gone.png").symlink_to(d / "never-existed.png")


def symlink_loop(d: Path) -> None:
    (d / "a.png").symlink_to(d / "b.png")
    (d / "b.png").symlink_to(d / "a.png")


def fifo(d: Path) -> None:
    os.mkfifo(d / "pipe.png")


def gray16_tiff(d: Path) -> None:
    arr = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(arr).save(d / "gray16.tif")


def cmyk_jpeg(d: Path) -> None:
    write_image(d / "cmyk.jpg", 3, size=32, mode="CMYK", fmt="JPEG")


def rgba_png(d: Path) -> None:
    write_image(d / "alpha.png", 4, size=32, mode="RGBA")


def odd_names(d: Path) -> None:
    for i, name in enumerate(("a cell with spaces.png", "célula ß 細胞.png", "new\nline.png")):
        write_image(d / name, 10 + i, size=32)


QUARANTINED: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-jpeg": (truncated_jpeg, "undecodable"),
    "zero-byte": (zero_byte, "empty"),
    "text-named-png": (text_named_png, "undecodable"),
    "png-bad-crc": (png_bad_crc, "bad CRC"),
    "decompression-bomb": (bomb, "too-large"),
    "1x1": (one_pixel, "too-small"),
    "dangling-symlink": (dangling_symlink, "No such file"),
    "symlink-loop": (symlink_loop, "Too many levels of symbolic links"),
    "fifo": (fifo, "not-a-file"),
}
ACCEPTED: dict[str, tuple[Callable[[Path], None], int]] = {
    "16-bit-gray-tiff": (gray16_tiff, 1),
    "cmyk-jpeg": (cmyk_jpeg, 1),
    "rgba-png": (rgba_png, 1),
    "spaces-unicode-newline-names": (odd_names, 3),
}


def case_dir(ws: Path, name: str, build: Callable[[Path], None]) -> Path:
    d = ws.parent / "cases" / name
    if not d.exists():
        d.mkdir(parents=True)
        build(d)
    return d


def add_json(runner, ws: Path, folder: Path) -> dict:
    result = invoke(runner, "add", "unlabeled", folder, "-w", ws, "--workers", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip() == ""
    return json.loads(result.stdout)


def delta(before: dict, after: dict) -> dict[str, int]:
    return {p: after["pools"][p] - n for p, n in before["pools"].items() if after["pools"][p] != n}


@pytest.mark.parametrize("name", list(QUARANTINED))
def test_bad_image_is_quarantined_with_its_reason(ws: Path, runner, name: str) -> None:
    build, reason = QUARANTINED[name]
    folder = case_dir(ws, name, build)
    before = status(runner, ws)
    report = add_json(runner, ws, folder)
    files = len(list(folder.iterdir()))
    assert len(report["quarantined"]) == files and report["added"] == {"quarantine": files}
    assert all(reason in q["reason"] for q in report["quarantined"]), report["quarantined"]
    assert delta(before, status(runner, ws)) == {"quarantine": files}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_odd_but_valid_image_is_imported(ws: Path, runner, name: str) -> None:
    build, n = ACCEPTED[name]
    before = status(runner, ws)
    report = add_json(runner, ws, case_dir(ws, name, build))
    assert report["added"] == {"unlabeled": n} and report["quarantined"] == []
    assert delta(before, status(runner, ws)) == {"unlabeled": n}


def test_unreadable_file_is_quarantined(ws: Path, runner) -> None:
    """chmod 000. Root reads such a file anyway, so as root the import runs without the two
    capabilities that let root ignore file modes: the kernel really refuses the read."""
    folder = ws.parent / "cases" / "unreadable"
    write_image(folder / "locked.png", 5, size=32).chmod(0)
    before = status(runner, ws)
    command = [sys.executable, "-m", "sslall", "add", "unlabeled", folder, "-w", ws, "--workers",
               "1", "--json"]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: root cannot be refused a read")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert [q["reason"] for q in report["quarantined"]] == ["unreadable: Permission denied"]
    assert delta(before, status(runner, ws)) == {"quarantine": 1}


# -- manifests --------------------------------------------------------------------------------


def _manifest_cases(root: Path) -> dict[str, tuple[str, str]]:
    cells = sorted((root / "L1").glob("*.png"))
    a, b = (c.relative_to(root).as_posix() for c in cells[:2])
    outside = root.parent / "outside.png"
    if not outside.exists():
        write_image(outside, 77)
        (root / "escape.png").symlink_to(outside)
    return {
        "unknown-class": (f"path,label\n{a},L1\n{b},L9\n", "line 3: label 'L9' is not a class"),
        "missing-path-column": (f"file,label\n{a},L1\n", "has no 'path' column"),
        "missing-label-column": (f"path\n{a}\n", "the labeled pool needs a label"),
        "duplicate-rows": (f"path,label\n{a},L1\n{b},L1\n{a},L1\n", "line 4: path"),
        "relative-path-outside": ("path,label\n../outside.png,L1\n", "outside the manifest's"),
        "absolute-path-outside": (f"path,label\n{outside},L1\n", "outside the manifest's"),
        "symlink-out-of-the-root": ("path,label\nescape.png,L1\n", "outside the manifest's"),
    }


MANIFESTS = ("unknown-class", "missing-path-column", "missing-label-column", "duplicate-rows",
             "relative-path-outside", "absolute-path-outside", "symlink-out-of-the-root")


@pytest.mark.parametrize("name", MANIFESTS)
def test_bad_manifest_is_refused_and_nothing_changes(ws: Path, runner, name: str) -> None:
    root = ws.parent / "cells"
    text, needle = _manifest_cases(root)[name]
    manifest = root / f"bad-{name}.csv"
    manifest.write_text(text)
    before = status(runner, ws)
    result = invoke(runner, "add", "labeled", manifest, "-w", ws)
    assert result.exit_code == 2
    assert needle in one_error_line(result)
    assert status(runner, ws) == before


# -- configs ----------------------------------------------------------------------------------

CONFIGS = {
    "unknown-key": (("[route]\n", "[route]\nbudgett = 3\n"), "'route.budgett': unknown key"),
    "wrong-type": (("epochs = 8", 'epochs = "eight"'), "'train.epochs': expected an integer"),
    "threshold-is-1": (("threshold = 0.6", "threshold = 1.0"),
                       "'pseudo.threshold': 1.0 is out of range (allowed: (0, 1))"),
    "threshold-is-0": (("threshold = 0.6", "threshold = 0"), "'pseudo.threshold': 0.0 is out"),
    "negative-budget": (("budget = 4", "budget = -2"), "'route.budget': -2 is out of range"),
    "no-such-backbone": (('backbone = "baseline-cnn"', 'backbone = "resnet-9000"'),
                         "resnet-9000"),
    "code-as-backbone": (('backbone = "baseline-cnn"',
                          'backbone = "__import__(\'os\').system(\'touch CANARY\')"'), "__import__"),
    "not-toml": (("[route]\n", "[route\n"), "is not valid TOML"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_config_is_refused_and_nothing_changes(ws: Path, runner, tmp_path: Path,
                                                   name: str) -> None:
    (old, new), needle = CONFIGS[name]
    path = ws / "sslall.toml"
    good = path.read_text()
    assert old in good
    path.write_text(good.replace(old, new.replace("CANARY", str(tmp_path / "ran"))))
    before_runs = sorted(p.name for p in (ws / "runs").iterdir())
    try:
        with PoolStore(ws / "pools" / "pools.db") as store:
            before = store.pool_sizes()
        result = invoke(runner, "--quiet", "round", "-w", ws)   # no progress bars on stderr
        assert result.exit_code == 2
        assert needle in one_error_line(result)
        with PoolStore(ws / "pools" / "pools.db") as store:
            assert store.pool_sizes() == before and store.last_round() == 0
        assert sorted(p.name for p in (ws / "runs").iterdir()) == before_runs
        assert not (tmp_path / "ran").exists()
    finally:
        path.write_text(good)


# -- and then a round -------------------------------------------------------------------------


def test_a_round_trains_on_the_odd_images_and_never_reads_the_quarantined(ws: Path,
                                                                          runner) -> None:
    for name, (build, _) in {**ACCEPTED, **QUARANTINED}.items():
        add_json(runner, ws, case_dir(ws, name, build))       # a no-op where already added
    before = status(runner, ws)
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["round"] == 1            # stdout is the JSON alone
    assert "round 1 recorded in" in result.stderr
    after = status(runner, ws)
    assert after["pools"]["quarantine"] == before["pools"]["quarantine"]
    with PoolStore(ws / "pools" / "pools.db") as store:
        odd = [s for s in store.samples() if "/cases/" in s.path]
    scored = (ws / "runs" / "round-0001" / "predictions.csv").read_text()
    for s in odd:
        assert (s.id in scored) == (s.pool != "quarantine"), s.path
    assert sum(s.pool != "quarantine" for s in odd) == 6
    assert invoke(runner, "check", "-w", ws).exit_code == 0
