import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, invoke, make_class_tree, write_image
from PIL import Image

from sslall.errors import InputError
from sslall.store._importer import import_source
from sslall.store._pools import PoolStore

MAX_PIXELS = 1_000_000


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG whose header declares a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
                     + chunk(b"IEND", b""))
    return path


def bad_files(root: Path) -> dict[str, str]:
    """One file of each bad kind; returns name -> expected quarantine reason prefix."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image at all")
    good = write_image(root / "tmp.jpg", 7, size=64)
    data = good.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.unlink()
    png = write_image(root / "tmp.png", 8, size=32).read_bytes()
    good_png = bytearray(png)
    idat = good_png.find(b"IDAT")
    good_png[idat + 6] ^= 0xFF  # corrupt compressed data -> CRC and zlib errors
    (root / "badcrc.png").write_bytes(bytes(good_png))
    (root / "tmp.png").unlink()
    png_bomb(root / "bomb.png")
    write_image(root / "tiny.png", 9, size=1)
    os.symlink(root / "nowhere.png", root / "dangling.png")
    os.symlink(root / "loop_b.png", root / "loop_a.png")
    os.symlink(root / "loop_a.png", root / "loop_b.png")
    return {"empty.png": "empty", "text.png": "undecodable", "truncated.jpg": "undecodable",
            "badcrc.png": "undecodable", "bomb.png": "too-large", "tiny.png": "too-small",
            "dangling.png": "unreadable", "loop_a.png": "unreadable", "loop_b.png": "unreadable"}


def good_variants(root: Path) -> list[Path]:
    """Readable but unusual images: 16-bit, gray, palette, RGBA, CMYK, TIFF, BMP, odd names."""
    root.mkdir(parents=True, exist_ok=True)
    arr16 = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(arr16).save(root / "gray16.png")
    Image.fromarray(arr16).save(root / "gray16.tif")
    out = [root / "gray16.png", root / "gray16.tif"]
    for i, (mode, name) in enumerate([("L", "gray.png"), ("P", "palette.png"),
                                      ("RGBA", "rgba.png"), ("CMYK", "cmyk.jpg"),
                                      ("RGB", "plain.bmp"), ("RGB", "field.tiff"),
                                      ("RGB", "name with spaces ünïcode.png"),
                                      ("RGB", "new\nline.png")]):
        out.append(write_image(root / name, 100 + i, size=32, mode=mode))
    return out


@pytest.fixture
def store(workspace: Path):
    with PoolStore(workspace / "pools" / "pools.db") as s:
        yield s


def test_folder_import_ids_duplicates_and_readd(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=3)
    (src / "L1" / "copy.png").write_bytes((src / "L1" / "L1_0.png").read_bytes())
    report = import_source(store, src, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=1)
    assert report.added == {"labeled": 9}
    assert len(report.duplicates) == 1 and report.duplicates[0][0].endswith("copy.png")
    again = import_source(store, src, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=2)
    assert again.added == {} and again.already_present == 9
    assert store.pool_sizes()["labeled"] == 9


def test_folder_import_streams_without_listing_the_folder(store: PoolStore, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder is walked (to count, then to import), never materialised as a list of entries."""
    from sslall.store import _importer as importer

    src = make_class_tree(tmp_path / "src", per_class=4)
    monkeypatch.setattr(importer, "list_source", lambda *a, **k: pytest.fail("listed the folder"))
    monkeypatch.setattr(importer, "WINDOW", 3)  # several windows of the one-pass walk
    seen: list[tuple[int, int]] = []
    report = import_source(store, src, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=2,
                           progress=lambda step, done, total: seen.append((done, total)) if step == "import"
                           else pytest.fail(step))
    assert report.added == {"labeled": 12}
    assert seen == [(i, 12) for i in range(1, 13)]


def test_same_bytes_two_labels_is_a_conflict(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=2)
    import_source(store, src, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=1)
    other = tmp_path / "other"
    (other / "L2").mkdir(parents=True)
    (other / "L2" / "x.png").write_bytes((src / "L1" / "L1_0.png").read_bytes())
    report = import_source(store, other, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=1)
    assert len(report.conflicts) == 1 and "kept 'L1'" in report.conflicts[0][1]
    assert store.counts()["labeled"]["L1"] == 2
    assert store.conflicts()[0][2:] == ("L2", "L1")


def test_bad_files_are_quarantined_and_import_carries_on(store: PoolStore, tmp_path: Path
                                                         ) -> None:
    src = tmp_path / "mixed"
    expected = bad_files(src / "bad")
    goods = good_variants(src / "good")
    report = import_source(store, src, "unlabeled", CLASSES, max_pixels=MAX_PIXELS, workers=2)
    reasons = {Path(p).name: r for p, r in report.quarantined}
    for name, prefix in expected.items():
        assert reasons[name].startswith(prefix), (name, reasons[name])
    assert report.added["unlabeled"] == len(goods)
    quarantined = {Path(s.path).name: s.reason for s in store.samples("quarantine")}
    assert set(quarantined) == set(expected)


def test_unknown_class_folder_is_refused(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=1, classes=("L1", "L9"))
    with pytest.raises(InputError, match=r"\['L9'\] that are not classes \(allowed: L1, L2, L3\)"):
        import_source(store, src, "labeled", CLASSES, max_pixels=MAX_PIXELS)
    assert sum(store.pool_sizes().values()) == 0


def test_manifest_checks(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=2)
    m = src / "m.csv"
    m.write_text("path,label\nL1/L1_0.png,L1\nL2/L2_0.png,L7\n")
    with pytest.raises(InputError, match="line 3: label 'L7' is not a class"):
        import_source(store, m, "labeled", CLASSES, max_pixels=MAX_PIXELS)
    m.write_text("file,label\nL1/L1_0.png,L1\n")
    with pytest.raises(InputError, match="no 'path' column"):
        import_source(store, m, "labeled", CLASSES, max_pixels=MAX_PIXELS)
    m.write_text("path,label\n../outside.png,L1\n")
    with pytest.raises(InputError, match="outside the manifest's folder"):
        import_source(store, m, "labeled", CLASSES, max_pixels=MAX_PIXELS)
    m.write_text("path\nL1/L1_0.png\n")
    with pytest.raises(InputError, match="needs a label"):
        import_source(store, m, "labeled", CLASSES, max_pixels=MAX_PIXELS)
    m.write_text("path,label\nL1/L1_0.png,L1\n./L1/L1_0.png,L1\n")
    with pytest.raises(InputError, match="line 3: path './L1/L1_0.png' is already on line 2"):
        import_source(store, m, "labeled", CLASSES, max_pixels=MAX_PIXELS)
    m.write_text("path,label\nL1/L1_0.png,L1\nL2/L2_1.png,L2\n")
    report = import_source(store, m, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=1)
    assert report.added == {"labeled": 2}
    assert sum(store.pool_sizes().values()) == 2


def test_holdout_is_stratified_and_grouped_by_patient(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=20)
    lines = ["path,label,patient"]
    for ci, c in enumerate(CLASSES):
        for i in range(20):
            lines.append(f"{c}/{c}_{i}.png,{c},P{(i % 10)}{ci}")
    (src / "m.csv").write_text("\n".join(lines) + "\n")
    import_source(store, src / "m.csv", "labeled", CLASSES, max_pixels=MAX_PIXELS,
                  holdout_fraction=0.2, workers=1)
    counts = store.counts()
    assert all(counts["holdout"][c] == 4 for c in CLASSES)
    held_patients = {s.patient for s in store.samples("holdout")}
    train_patients = {s.patient for s in store.samples("labeled")}
    assert held_patients and not held_patients & train_patients


def test_add_cli_reports_and_json(workspace: Path, tmp_path: Path, runner) -> None:
    src = make_class_tree(tmp_path / "src", per_class=5)
    result = invoke(runner, "add", "labeled", src, "-w", workspace, "--holdout-fraction", "0.2")
    assert result.exit_code == 0, result.output
    assert "added 3 to holdout, 12 to labeled" in result.output
    result = invoke(runner, "add", "labeled", src, "-w", workspace, "--json")
    assert '"already_present": 15' in result.output
    result = invoke(runner, "add", "labeled", tmp_path / "nope", "-w", workspace)
    assert result.exit_code == 3 and "does not exist" in result.stderr
    result = invoke(runner, "add", "pseudo", src, "-w", workspace)
    assert result.exit_code == 2 and "allowed: labeled, unlabeled, holdout" in result.stderr
    assert "Traceback" not in result.output + result.stderr
