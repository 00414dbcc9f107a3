"""One file is one sample, whatever its history, and every import keeps the invariants that
`sslall check` verifies: after each scenario the store passes `check_store` and no path is on
two rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import CLASSES, make_class_tree, write_image

from sslall.errors import InputError
from sslall.store._importer import import_source
from sslall.store._integrity import check_store
from sslall.store._pools import PoolStore
from sslall.store._records import Move

MAX_PIXELS = 1_000_000


@pytest.fixture
def store(workspace: Path):
    with PoolStore(workspace / "pools" / "pools.db") as s:
        yield s


def add(store: PoolStore, source: Path, pool: str = "unlabeled"):
    return import_source(store, source, pool, CLASSES, max_pixels=MAX_PIXELS, workers=1)


def sound(store: PoolStore) -> None:
    """The invariants `sslall check` verifies hold, and each path is one row."""
    assert check_store(store, CLASSES) == []
    twice = store.conn.execute(
        "SELECT path, COUNT(*) FROM samples GROUP BY path HAVING COUNT(*) > 1").fetchall()
    assert twice == []


def rows_at(store: PoolStore, path: Path) -> list[tuple[str, str | None]]:
    return [(s.pool, s.label) for s in store.samples() if s.path == str(path)]


def history(store: PoolStore, path: Path) -> list[tuple[str | None, str, str]]:
    (sample,) = [s for s in store.samples() if s.path == str(path)]
    return [(e[4], e[5], e[8]) for e in store.events(sample.id)]


@pytest.mark.parametrize("broken", ["empty", "dangling-symlink", "fifo", "garbage"])
def test_a_quarantined_file_readded_once_readable_is_released(store: PoolStore, tmp_path: Path,
                                                              broken: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cell = folder / "cell.png"
    if broken == "empty":
        cell.write_bytes(b"")
    elif broken == "dangling-symlink":
        cell.symlink_to(tmp_path / "not-yet.png")
    elif broken == "fifo":
        os.mkfifo(cell)
    else:
        cell.write_bytes(b"no pixels here")
    report = add(store, folder)
    assert len(report.quarantined) == 1 and rows_at(store, cell) == [("quarantine", None)]
    sound(store)
    if cell.is_symlink() or broken == "fifo":
        cell.unlink()
    write_image(cell, 3, size=32)
    report = add(store, folder)
    assert report.released == [(str(cell), "unlabeled")] and not report.added
    assert rows_at(store, cell) == [("unlabeled", None)]
    steps = history(store, cell)
    assert [(a, b) for a, b, _ in steps] == [(None, "quarantine"), ("quarantine", "unlabeled")]
    assert steps[1][2] == "re-added, readable again"
    assert store.pool_sizes()["quarantine"] == 0
    sound(store)
    assert add(store, folder).already_present == 1          # and again: a no-op
    sound(store)


def test_a_file_quarantined_twice_for_different_reasons_stays_one_row(store: PoolStore,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cell = folder / "cell.png"
    cell.write_bytes(b"")
    add(store, folder)
    cell.write_bytes(b"still not an image")
    report = add(store, folder)
    assert report.released == [(str(cell), "quarantine")]
    (row,) = [s for s in store.samples() if s.path == str(cell)]
    assert row.pool == "quarantine" and row.reason.startswith("undecodable")
    sound(store)


def test_a_labelled_import_releases_into_labeled_with_its_label(store: PoolStore,
                                                                tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=2)
    cell = src / "L2" / "L2_0.png"
    good = cell.read_bytes()
    cell.write_bytes(b"")
    add(store, src, "labeled")
    assert rows_at(store, cell) == [("quarantine", "L2")]
    cell.write_bytes(good)
    report = add(store, src, "labeled")
    assert report.released == [(str(cell), "labeled")]
    assert rows_at(store, cell) == [("labeled", "L2")]
    sound(store)


def test_a_file_a_round_quarantined_as_changed_is_released_by_readding_it(
        store: PoolStore, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    cell = write_image(folder / "cell.png", 4, size=32)
    add(store, folder)
    (sample,) = store.samples("unlabeled")
    store.apply_moves([Move(sample.id, "quarantine", from_pool="unlabeled",
                            reason="changed-file")], round_no=0)
    write_image(cell, 5, size=32)                           # the edit the round saw
    report = add(store, folder)
    assert report.released == [(str(cell), "unlabeled")]
    assert rows_at(store, cell) == [("unlabeled", None)]
    assert [(a, b) for a, b, _ in history(store, cell)] == [
        (None, "unlabeled"), ("unlabeled", "quarantine"), ("quarantine", "unlabeled")]
    sound(store)


def test_a_manifest_with_labels_is_refused_for_unlabeled(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=1)
    (src / "m.csv").write_text("path,label\nL1/L1_0.png,L1\nL2/L2_0.png,\n")
    with pytest.raises(InputError, match="1 entries have a label, e.g. .*the unlabeled pool "
                                         "takes none"):
        add(store, src / "m.csv")
    assert sum(store.pool_sizes().values()) == 0
    (src / "m.csv").write_text("path,label\nL1/L1_0.png,\nL2/L2_0.png,\n")
    assert add(store, src / "m.csv").added == {"unlabeled": 2}       # an empty label is none
    sound(store)


def test_every_import_path_keeps_the_invariants(store: PoolStore, tmp_path: Path) -> None:
    """Unlabeled, then labelled (promotion), duplicates, a conflict, a holdout, a manifest."""
    src = make_class_tree(tmp_path / "src", per_class=3)
    (src / "L1" / "copy.png").write_bytes((src / "L1" / "L1_0.png").read_bytes())
    add(store, src)
    sound(store)
    report = add(store, src, "labeled")
    assert report.promoted == 9
    sound(store)
    (src / "L2" / "twin.png").write_bytes((src / "L1" / "L1_1.png").read_bytes())
    assert len(add(store, src, "labeled").conflicts) == 1
    sound(store)
    more = make_class_tree(tmp_path / "more", per_class=4, seed=9)
    import_source(store, more, "labeled", CLASSES, max_pixels=MAX_PIXELS, workers=1,
                  holdout_fraction=0.25)
    assert store.pool_sizes()["holdout"] > 0
    sound(store)
    (more / "m.csv").write_text("path,label,patient\nL3/L3_0.png,L3,p1\n")
    add(store, more / "m.csv", "labeled")
    sound(store)


def test_an_image_beside_the_class_folders_is_refused_with_the_count(store: PoolStore,
                                                                     tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=1)
    write_image(src / "stray.png", 1)
    write_image(src / "other.jpg", 2, fmt="JPEG")
    (src / "notes.txt").write_text("not an image: not counted\n")
    with pytest.raises(InputError, match=r"has 2 image\(s\) outside the class sub-folders, e.g. "
                                         "'other.jpg'"):
        add(store, src, "labeled")
    assert sum(store.pool_sizes().values()) == 0


def test_a_class_folder_that_is_a_symlink_is_imported(store: PoolStore, tmp_path: Path) -> None:
    src = make_class_tree(tmp_path / "src", per_class=2, classes=CLASSES[:2])
    elsewhere = make_class_tree(tmp_path / "elsewhere", per_class=2, classes=CLASSES[2:], seed=4)
    (src / "L3").symlink_to(elsewhere / "L3")
    report = add(store, src, "labeled")
    assert report.added == {"labeled": 6}
    assert store.counts()["labeled"] == {"L1": 2, "L2": 2, "L3": 2}
    (src / "L9").symlink_to(elsewhere / "L3")
    with pytest.raises(InputError, match=r"sub-folder\(s\) \['L9'\] that are not classes"):
        add(store, src, "labeled")
    sound(store)
