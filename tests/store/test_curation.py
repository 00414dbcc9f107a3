"""Fixing labels and removing samples on a real store and real files: labels set and corrected
as hand labels with reason and actor, conflicts resolved, samples removed with their history
kept (and re-added), quarantined samples released only when their file is whole again; the
store passes `check_store` after each."""

import sqlite3
from pathlib import Path

import pytest
from conftest import write_image

from sslall._fsutil import sha256_file
from sslall.errors import InputError, IntegrityError, NotFoundError, UsageError
from sslall.store._curation import (
    conflicts,
    find_sample,
    quarantined,
    release,
    remove,
    sample_history,
    set_label,
)
from sslall.store._importer import import_source
from sslall.store._integrity import check_store
from sslall.store._pools import PoolStore
from sslall.store._records import MACHINE, REMOVED, Move, NewSample

CLASSES = ("A", "B")
PIXELS = 10_000_000


@pytest.fixture
def store(tmp_path: Path):
    with PoolStore(tmp_path / "pools.db", create=True) as s:
        yield s


def _add(store: PoolStore, path: Path, pool: str, label: str | None = None) -> str:
    sid = sha256_file(path)
    store.add_samples([NewSample(sid, str(path), pool, label)])
    return sid


def _sound(store: PoolStore) -> None:
    assert check_store(store, CLASSES) == []


def test_find_sample_by_id_prefix_and_path(store: PoolStore, tmp_path: Path) -> None:
    sid = _add(store, write_image(tmp_path / "a.png", 1), "unlabeled")
    assert find_sample(store, sid).id == sid
    assert find_sample(store, sid[:8].upper()).id == sid
    assert find_sample(store, str(tmp_path / "a.png")).id == sid
    with pytest.raises(NotFoundError, match="at least 8 hex"):
        find_sample(store, sid[:7])
    with pytest.raises(NotFoundError):
        find_sample(store, str(tmp_path / "nowhere.png"))


def test_an_ambiguous_prefix_is_refused(store: PoolStore, tmp_path: Path) -> None:
    store.add_samples([NewSample("abcdef01" + "0" * 56, "/x/1.png", "unlabeled"),
                       NewSample("abcdef01" + "1" * 56, "/x/2.png", "unlabeled")])
    with pytest.raises(UsageError, match="several sample ids"):
        find_sample(store, "abcdef01")
    assert find_sample(store, "abcdef011").path == "/x/2.png"


def test_set_label_moves_an_unlabeled_sample_to_labeled_as_a_hand_label(
        store: PoolStore, tmp_path: Path) -> None:
    sid = _add(store, write_image(tmp_path / "u.png", 2), "unlabeled")
    change = set_label(store, sid, "B", CLASSES, reason="read by Dr. K", by="kim")
    assert (change.from_pool, change.to_pool, change.old_label, change.changed) == (
        "unlabeled", "labeled", None, True)
    s = store.get(sid)
    assert (s.pool, s.label, s.label_source) == ("labeled", "B", "hand")
    last = store.events(sid)[-1]
    assert last[9] == "hand:kim" and "read by Dr. K" in last[8]
    _sound(store)
    # a hand label is human: the machine may not overwrite it
    with pytest.raises(IntegrityError, match="human-labelled"):
        store.apply_moves([Move(sid, "pseudo", from_pool="labeled", label="A")], round_no=1,
                          actor=MACHINE)


def test_correcting_a_holdout_label_keeps_its_pool(store: PoolStore, tmp_path: Path) -> None:
    sid = _add(store, write_image(tmp_path / "h.png", 3), "holdout", "A")
    change = set_label(store, sid, "B", CLASSES, reason="mislabelled", by="kim")
    assert (change.to_pool, change.old_label, change.label) == ("holdout", "A", "B")
    assert store.get(sid).label == "B"
    assert not set_label(store, sid, "B", CLASSES, reason="again", by="kim").changed
    assert len(store.events(sid)) == 2  # the no-op wrote nothing
    _sound(store)


def test_set_label_refusals(store: PoolStore, tmp_path: Path) -> None:
    sid = _add(store, write_image(tmp_path / "q.png", 4), "labeled", "A")
    with pytest.raises(InputError, match=r"'C' is not a class \(allowed: A, B\)"):
        set_label(store, sid, "C", CLASSES, reason="x", by="kim")
    with pytest.raises(UsageError, match="--reason is empty"):
        set_label(store, sid, "B", CLASSES, reason="  ", by="kim")
    store.apply_moves([Move(sid, "quarantine", from_pool="labeled", reason="missing-file: x")],
                      round_no=0)
    with pytest.raises(UsageError, match="quarantined"):
        set_label(store, sid, "B", CLASSES, reason="x", by="kim")


def test_a_conflict_from_add_is_resolved_and_not_reported_again(store: PoolStore,
                                                                 tmp_path: Path) -> None:
    write_image(tmp_path / "one" / "A" / "c.png", 5)
    write_image(tmp_path / "two" / "B" / "c.png", 5)
    import_source(store, tmp_path / "one", "labeled", CLASSES, max_pixels=PIXELS, workers=1)
    report = import_source(store, tmp_path / "two", "labeled", CLASSES, max_pixels=PIXELS,
                           workers=1)
    assert len(report.conflicts) == 1
    [open_one] = conflicts(store)
    assert (open_one.label, open_one.existing_label, open_one.resolved_at) == ("B", "A", None)
    change = set_label(store, open_one.sample_id, "B", CLASSES, reason="second read", by="kim")
    assert change.conflicts_resolved == 1
    assert conflicts(store) == []
    settled = conflicts(store, include_resolved=True)
    assert all(c.resolved_at and "second read" in c.resolution for c in settled)
    # neither folder's label is reported as a conflict any more: both were decided
    for folder in ("one", "two"):
        again = import_source(store, tmp_path / folder, "labeled", CLASSES, max_pixels=PIXELS,
                              workers=1)
        assert again.conflicts == []
    _sound(store)


def test_remove_keeps_the_history_and_check_stays_whole(store: PoolStore, tmp_path: Path) -> None:
    path = write_image(tmp_path / "A" / "r.png", 6)
    import_source(store, tmp_path / "A", "unlabeled", CLASSES, max_pixels=PIXELS, workers=1)
    sid = sha256_file(path)
    [gone] = remove(store, [find_sample(store, str(path))], reason="debris", by="kim")
    assert (gone.sample_id, gone.pool) == (sid, "unlabeled")
    assert store.get(sid) is None and store.find_path(str(path)) is None
    last = store.events(sid)[-1]
    assert (last[4], last[5], last[9]) == ("unlabeled", REMOVED, "hand:kim")
    assert "debris" in last[8] and str(path) in last[8]
    _sound(store)
    row, events = sample_history(store, sid[:10])
    assert row is None and events[-1][5] == REMOVED
    # adding the file again brings it back; the log continues and still replays
    import_source(store, tmp_path / "A", "unlabeled", CLASSES, max_pixels=PIXELS, workers=1)
    assert store.get(sid).pool == "unlabeled"
    assert [e[5] for e in store.events(sid)] == ["unlabeled", REMOVED, "unlabeled"]
    _sound(store)


def test_remove_is_all_or_nothing(store: PoolStore, tmp_path: Path) -> None:
    a = _add(store, write_image(tmp_path / "a.png", 7), "unlabeled")
    b = _add(store, write_image(tmp_path / "b.png", 8), "unlabeled")
    stale = store.get(b)
    store.apply_moves([Move(b, "review", from_pool="unlabeled")], round_no=1)
    with pytest.raises(IntegrityError, match="not unlabeled"):
        remove(store, [store.get(a), stale], reason="x", by="kim")
    assert store.get(a) is not None
    _sound(store)


def test_check_still_finds_a_removed_sample_with_a_row(store: PoolStore, tmp_path: Path) -> None:
    sid = _add(store, write_image(tmp_path / "a.png", 9), "unlabeled")
    remove(store, [store.get(sid)], reason="x", by="kim")
    store.conn.execute("INSERT INTO samples (id, path, pool, added_at, updated_at) VALUES "
                       "(?, ?, 'unlabeled', 'now', 'now')", (sid, str(tmp_path / "a.png")))
    assert [v.kind for v in check_store(store, CLASSES, files=False)] == ["replay-mismatch"]


def test_release_only_a_file_whole_again(store: PoolStore, tmp_path: Path) -> None:
    pa, pb = write_image(tmp_path / "a.png", 10), write_image(tmp_path / "b.png", 11)
    a, b = _add(store, pa, "labeled", "A"), _add(store, pb, "unlabeled")
    store.apply_moves([Move(b, "pseudo", from_pool="unlabeled", label="B", label_source=MACHINE)],
                      round_no=1)
    saved = pa.read_bytes()
    pa.unlink()
    pb.write_bytes(b"edited")
    store.apply_moves([Move(a, "quarantine", from_pool="labeled", reason="missing-file: gone"),
                       Move(b, "quarantine", from_pool="pseudo", reason="changed-file: x")],
                      round_no=1)
    listed = {q.sample_id: q for q in quarantined(store)}
    assert (listed[a].from_pool, listed[a].reason) == ("labeled", "missing-file: gone")
    report = release(store, [store.get(a), store.get(b)], max_pixels=PIXELS, by="kim")
    assert report.released == [] and {r[0] for r in report.refused} == {a, b}
    assert "missing" in dict((r[0], r[2]) for r in report.refused)[a]
    pa.write_bytes(saved)
    report = release(store, [store.get(a), store.get(b)], max_pixels=PIXELS, by="kim",
                     reason="restored from backup")
    assert report.released == [(a, str(pa), "labeled")]
    assert "sha256" in report.refused[0][2]
    s = store.get(a)
    assert (s.pool, s.label, s.label_source) == ("labeled", "A", "import")
    assert "restored from backup" in store.events(a)[-1][8]
    _sound(store)


def test_a_file_quarantined_at_import_is_not_released(store: PoolStore, tmp_path: Path) -> None:
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "bad.png").write_bytes(b"not an image")
    import_source(store, tmp_path, "labeled", CLASSES, max_pixels=PIXELS, workers=1)
    [q] = quarantined(store)
    assert q.from_pool is None and "undecodable" in q.reason
    report = release(store, [store.get(q.sample_id)], max_pixels=PIXELS, by="kim")
    assert "sslall add" in report.refused[0][2]


def test_an_older_store_gains_the_resolution_columns(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    PoolStore(db, create=True).close()
    conn = sqlite3.connect(db)
    conn.executescript("ALTER TABLE conflicts DROP COLUMN resolution; "
                       "ALTER TABLE conflicts DROP COLUMN resolved_at;")
    conn.execute("INSERT INTO conflicts VALUES ('/p.png', 'abc', 'A', 'B', 't')")
    conn.commit()
    conn.close()
    with PoolStore(db, read_only=True) as ro:
        assert [c.resolved_at for c in conflicts(ro)] == [None]
    with PoolStore(db) as rw:
        assert [c.resolution for c in conflicts(rw)] == [None]
