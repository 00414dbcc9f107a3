import sqlite3
from pathlib import Path

import pytest
from conftest import write_image

from sslall._fsutil import sha256_file
from sslall.errors import IntegrityError
from sslall.store._integrity import check_store
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample, RoundRecord

CLASSES = ("A", "B")


@pytest.fixture
def store(tmp_path: Path):
    s = PoolStore(tmp_path / "pools.db", create=True)
    paths = [write_image(tmp_path / f"img{i}.png", i) for i in range(6)]
    ids = [sha256_file(p) for p in paths]
    s.add_samples([
        NewSample(ids[0], str(paths[0]), "labeled", "A"),
        NewSample(ids[1], str(paths[1]), "labeled", "B"),
        NewSample(ids[2], str(paths[2]), "unlabeled"),
        NewSample(ids[3], str(paths[3]), "unlabeled"),
        NewSample(ids[4], str(paths[4]), "holdout", "A"),
        NewSample(ids[5], str(paths[5]), "quarantine", reason="undecodable: test"),
    ])
    s.ids = ids
    yield s
    s.close()


def test_wal_and_counts(store: PoolStore) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.pool_sizes() == {"labeled": 2, "unlabeled": 2, "pseudo": 0, "review": 0,
                                  "holdout": 1, "quarantine": 1}
    assert store.counts()["labeled"] == {"A": 1, "B": 1}
    assert check_store(store, CLASSES) == []


def test_moves_write_events_and_replay(store: PoolStore) -> None:
    ids = store.ids
    store.apply_moves([Move(ids[2], "pseudo", from_pool="unlabeled", label="A",
                            label_source="pseudo", confidence=0.97, reason="p>=0.9")], round_no=1,
                      record=RoundRecord(1, "t0", {"metrics": {"macro_f1": 0.5}}))
    sample = store.get(ids[2])
    assert (sample.pool, sample.label, sample.confidence, sample.round) == ("pseudo", "A", 0.97, 1)
    events = store.events(ids[2])
    assert [(e[4], e[5], e[6]) for e in events] == [(None, "unlabeled", None),
                                                    ("unlabeled", "pseudo", "A")]
    assert store.rounds()[0]["metrics"] == {"macro_f1": 0.5}
    assert store.last_round() == 1
    assert check_store(store, CLASSES) == []


def test_a_failing_move_rolls_back_the_whole_batch(store: PoolStore) -> None:
    ids = store.ids
    before = store.pool_sizes()
    n_events = len(store.events())
    with pytest.raises(IntegrityError, match="not labeled as the move expects"):
        store.apply_moves([
            Move(ids[2], "pseudo", from_pool="unlabeled", label="A", label_source="pseudo"),
            Move(ids[3], "review", from_pool="labeled"),
        ], round_no=1, weights={ids[0]: 3.0}, record=RoundRecord(1, "t0"))
    assert store.pool_sizes() == before
    assert len(store.events()) == n_events
    assert store.get(ids[0]).weight == 1.0
    assert store.rounds() == []


def test_machine_never_overwrites_a_human_label(store: PoolStore) -> None:
    ids = store.ids
    with pytest.raises(IntegrityError, match="human-labelled"):
        store.apply_moves([Move(ids[0], "pseudo", label="B", label_source="pseudo")], round_no=1)
    with pytest.raises(IntegrityError, match="human-labelled"):
        store.apply_moves([Move(ids[0], "labeled", label="B", label_source="pseudo")], round_no=1)
    store.apply_moves([Move(ids[0], "quarantine", reason="changed-file")], round_no=1)
    assert store.get(ids[0]).pool == "quarantine"
    # a human (the review import) may relabel
    store.apply_moves([Move(ids[1], "labeled", label="A", label_source="review")], round_no=1,
                      actor="review")
    assert store.get(ids[1]).label == "A"


def test_weights_reset_each_round(store: PoolStore) -> None:
    ids = store.ids
    store.apply_moves([], round_no=1, weights={ids[0]: 2.0})
    assert store.get(ids[0]).weight == 2.0
    store.apply_moves([], round_no=2, weights={ids[1]: 2.0})
    assert (store.get(ids[0]).weight, store.get(ids[1]).weight) == (1.0, 2.0)


def test_check_finds_tampering_and_changed_files(store: PoolStore, tmp_path: Path) -> None:
    ids = store.ids
    with store.conn:
        store.conn.execute("UPDATE samples SET pool = 'pseudo', label = 'B' WHERE id = ?",
                           (ids[3],))
        store.conn.execute("UPDATE samples SET label = 'Z' WHERE id = ?", (ids[4],))
    (tmp_path / "img0.png").write_bytes(b"changed")
    (tmp_path / "img1.png").unlink()
    kinds = {(v.kind, v.sample_id) for v in check_store(store, CLASSES)}
    assert ("replay-mismatch", ids[3]) in kinds
    assert ("bad-label", ids[4]) in kinds
    assert ("changed-file", ids[0]) in kinds
    assert ("missing-file", ids[1]) in kinds
    assert all(v.kind != "changed-file" for v in check_store(store, CLASSES, files=False))


def test_schema_version_is_checked(tmp_path: Path) -> None:
    PoolStore(tmp_path / "p.db", create=True).close()
    conn = sqlite3.connect(tmp_path / "p.db")
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(IntegrityError, match="schema version 99"):
        PoolStore(tmp_path / "p.db")


def test_pool_store_imports_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, sslall.store._pools, sslall.config, sslall.workspace, sslall.data._images,"
            " sslall.store._importer, sslall.store._integrity, sslall.cli._app; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
