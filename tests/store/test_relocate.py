"""`relocate` and `add`'s path update on a real store and real files: paths move only to files
with the sample's bytes, on folder boundaries, as events; quarantined-as-missing cells return."""

import shutil
from pathlib import Path

import pytest
from conftest import write_image

from sslall._fsutil import sha256_file
from sslall.errors import InputError, IntegrityError, UsageError
from sslall.store._importer import import_source
from sslall.store._integrity import check_store
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample, PathChange
from sslall.store._relocate import relocate, under_prefix

CLASSES = ("A", "B")


def _sample(store: PoolStore, path: Path, pool: str, label: str | None = None) -> str:
    sid = sha256_file(path)
    store.add_samples([NewSample(sid, str(path), pool, label)])
    return sid


@pytest.fixture
def moved(tmp_path: Path):
    """A store of 6 cells under old/ (one pseudo and one labeled later quarantined as missing),
    then old/ renamed to new/."""
    old = tmp_path / "old"
    store = PoolStore(tmp_path / "pools.db", create=True)
    ids = {
        "a": _sample(store, write_image(old / "A" / "a.png", 1), "labeled", "A"),
        "b": _sample(store, write_image(old / "B" / "b.png", 2), "labeled", "B"),
        "u": _sample(store, write_image(old / "u" / "u.png", 3), "unlabeled"),
        "h": _sample(store, write_image(old / "A" / "h.png", 4), "holdout", "A"),
        "p": _sample(store, write_image(old / "u" / "p.png", 5), "unlabeled"),
        "q": _sample(store, write_image(old / "B" / "q.png", 6), "labeled", "B"),
    }
    store.apply_moves([Move(ids["p"], "pseudo", from_pool="unlabeled", label="A",
                            label_source="pseudo", confidence=0.97, reason="p>=0.9")], round_no=1)
    store.apply_moves([Move(ids["p"], "quarantine", from_pool="pseudo",
                            reason="missing-file: No such file or directory"),
                       Move(ids["q"], "quarantine", from_pool="labeled",
                            reason="missing-file: No such file or directory")], round_no=2)
    shutil.move(old, tmp_path / "new")
    store.ids = ids
    yield store
    store.close()


def test_prefix_is_a_folder_not_a_string() -> None:
    assert under_prefix("/data/a/x.png", "/data/a") == "x.png"
    assert under_prefix("/data/a/x.png", "/data/a/") == "x.png"
    assert under_prefix("/data/ab/x.png", "/data/a") is None
    assert under_prefix("/data/a", "/data/a") == ""
    assert under_prefix("/x.png", "/") == "x.png"


def test_relocate_moves_every_verified_path_as_events_and_releases_missing(
        moved: PoolStore, tmp_path: Path) -> None:
    ids = moved.ids
    assert {v.kind for v in check_store(moved, CLASSES)} == {"missing-file"}
    report = relocate(moved, str(tmp_path / "old"), str(tmp_path / "new"))
    assert (report.matched, len(report.moved), report.refused) == (6, 6, [])
    assert {r.sample_id: r.released_to for r in report.released} == {ids["q"]: "labeled",
                                                                     ids["p"]: "unlabeled"}
    assert check_store(moved, CLASSES) == []
    assert all(s.path.startswith(str(tmp_path / "new") + "/") for s in moved.samples())
    q = moved.get(ids["q"])
    assert (q.pool, q.label, q.label_source) == ("labeled", "B", "import")
    assert moved.get(ids["p"]).pool == "unlabeled" and moved.get(ids["p"]).label is None
    a_events = moved.events(ids["a"])
    assert a_events[-1][4:6] == ("labeled", "labeled") and a_events[-1][9] == "relocate"
    assert a_events[-1][8] == (f"relocated from {tmp_path}/old/A/a.png to "
                               f"{tmp_path}/new/A/a.png")
    q_events = moved.events(ids["q"])
    assert [e[4:6] for e in q_events[-2:]] == [("quarantine", "quarantine"),
                                               ("quarantine", "labeled")]
    assert moved.duplicates() == []  # the import alias moved with the path


def test_missing_or_different_files_are_reported_and_left(moved: PoolStore,
                                                          tmp_path: Path) -> None:
    new = tmp_path / "new"
    (new / "A" / "a.png").unlink()
    (new / "B" / "b.png").write_bytes(b"not the same bytes")
    before = {s.id: s.path for s in moved.samples()}
    report = relocate(moved, str(tmp_path / "old"), str(new))
    why = {Path(n).name: w for _, n, w in report.refused}
    assert why["a.png"] == "missing" and why["b.png"].startswith("different bytes")
    assert len(report.moved) == 4
    assert moved.get(moved.ids["a"]).path == before[moved.ids["a"]]
    assert moved.get(moved.ids["b"]).path == before[moved.ids["b"]]
    assert report.as_dict()["refused"] == 2


def test_strict_and_dry_run_change_nothing(moved: PoolStore, tmp_path: Path) -> None:
    before = sorted((s.id, s.path, s.pool) for s in moved.samples())
    events = len(moved.events())
    (tmp_path / "new" / "A" / "a.png").unlink()
    with pytest.raises(InputError, match=r"1 of 6 files .* missing or differ.*--strict"):
        relocate(moved, str(tmp_path / "old"), str(tmp_path / "new"), strict=True)
    report = relocate(moved, str(tmp_path / "old"), str(tmp_path / "new"), dry_run=True)
    assert report.dry_run and len(report.moved) == 5 and len(report.released) == 2
    assert sorted((s.id, s.path, s.pool) for s in moved.samples()) == before
    assert len(moved.events()) == events


def test_boundaries_and_mistakes(tmp_path: Path) -> None:
    store = PoolStore(tmp_path / "pools.db", create=True)
    in_a = _sample(store, write_image(tmp_path / "a" / "x.png", 1), "unlabeled")
    in_ab = _sample(store, write_image(tmp_path / "ab" / "y.png", 2), "unlabeled")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    report = relocate(store, str(tmp_path / "a"), str(tmp_path / "c"))
    assert [r.sample_id for r in report.moved] == [in_a]
    assert store.get(in_ab).path == str(tmp_path / "ab" / "y.png")
    with pytest.raises(UsageError, match="no sample's path is under .*recorded absolute"):
        relocate(store, str(tmp_path / "nowhere"), str(tmp_path / "c"))
    with pytest.raises(UsageError, match="the same folder"):
        relocate(store, str(tmp_path / "c"), str(tmp_path / "c") + "/")
    with pytest.raises(IntegrityError, match="is not at"):  # a stale change
        store.set_paths([PathChange(in_a, "/elsewhere.png", "/x.png")], round_no=0,
                        actor="relocate")
    store.close()


def test_add_updates_the_path_of_a_known_sample_whose_file_is_gone(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    store = PoolStore(tmp_path / "pools.db", create=True)
    kept = _sample(store, write_image(old / "A" / "a.png", 1), "labeled", "A")
    lost = _sample(store, write_image(old / "B" / "b.png", 2), "labeled", "B")
    store.apply_moves([Move(lost, "quarantine", from_pool="labeled",
                            reason="missing-file: No such file or directory")], round_no=1)
    shutil.copytree(old, new)
    # while the recorded files still exist, the copies are duplicates, as before
    report = import_source(store, new, "labeled", CLASSES, max_pixels=10**7, workers=1)
    assert report.relocated == [] and len(report.duplicates) == 2
    shutil.rmtree(old)
    report = import_source(store, new, "labeled", CLASSES, max_pixels=10**7, workers=1)
    assert sorted((Path(p).name, Path(o).parent.parent.name) for p, o in report.relocated) == [
        ("a.png", "old"), ("b.png", "old")]
    assert report.duplicates == [] and not report.added
    assert report.released == [(str(new / "B" / "b.png"), "labeled")]
    assert report.as_dict()["relocated"][0] == {"path": str(new / "A" / "a.png"),
                                                "was": str(old / "A" / "a.png")}
    assert store.get(kept).path == str(new / "A" / "a.png")
    assert (store.get(lost).pool, store.get(lost).label) == ("labeled", "B")
    assert store.events(kept)[-1][8].startswith("relocated from") and \
        store.events(kept)[-1][9] == "import"
    assert check_store(store, CLASSES) == [] and store.duplicates() == []
    store.close()
