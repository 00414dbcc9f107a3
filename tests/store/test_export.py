"""`export_data` on a real store and real files: what is chosen, the tree and CSV it writes,
files changed since import left out, and nothing in DEST overwritten."""

import csv
import os
from pathlib import Path

import pytest
from conftest import write_image

from sslall._fsutil import sha256_file
from sslall.errors import UsageError
from sslall.store._export import COLUMNS, export_data
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample

CLASSES = ("A", "B")


@pytest.fixture
def store(tmp_path: Path):
    """labeled a1, a2 (same file name, other folders), b1; holdout h; pseudo p95 (0.97) and
    p80 (0.8); one unlabeled; all under tmp/img."""
    img = tmp_path / "img"
    (tmp_path / "ws").mkdir()
    s = PoolStore(tmp_path / "ws" / "pools.db", create=True)
    rows = {"a1": ("x/cell.png", "labeled", "A"), "a2": ("y/cell.png", "labeled", "A"),
            "b1": ("b1.png", "labeled", "B"), "h": ("h.png", "holdout", "B"),
            "p95": ("p95.png", "unlabeled", None), "p80": ("p80.png", "unlabeled", None),
            "u": ("u.png", "unlabeled", None)}
    s.ids, s.paths = {}, {}
    for seed, (key, (name, pool, label)) in enumerate(rows.items()):
        path = write_image(img / name, seed)
        s.ids[key], s.paths[key] = sha256_file(path), path
        s.add_samples([NewSample(s.ids[key], str(path), pool, label)])
    s.apply_moves([Move(s.ids["p95"], "pseudo", from_pool="unlabeled", label="B",
                        label_source="pseudo", confidence=0.97),
                   Move(s.ids["p80"], "pseudo", from_pool="unlabeled", label="A",
                        label_source="pseudo", confidence=0.8)], round_no=1)
    yield s
    s.close()


def _manifest(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_tree_holds_the_human_labels_and_chosen_pseudo_labels(store: PoolStore,
                                                              tmp_path: Path) -> None:
    dest = tmp_path / "out"
    report = export_data(store, tmp_path / "ws", dest, pseudo_above=0.95, include_holdout=True)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))
    assert files[0].startswith("holdout/B/") and len(files) == 5
    later = max(store.ids["a1"], store.ids["a2"])  # in id order, the second cell.png is renamed
    assert set(os.listdir(dest / "labeled" / "A")) == {"cell.png", f"cell-{later[:12]}.png"}
    assert os.listdir(dest / "pseudo" / "B") == ["p95.png"]
    assert sha256_file(dest / "pseudo" / "B" / "p95.png") == store.ids["p95"]
    rows = {r["sample_id"]: r for r in _manifest(dest / "manifest.csv")}
    assert set(rows) == {store.ids[k] for k in ("a1", "a2", "b1", "h", "p95")}
    assert rows[store.ids["p95"]] | {"path": ""} == {
        "path": "", "label": "B", "label_source": "pseudo", "confidence": "0.9700",
        "pool": "pseudo", "sample_id": store.ids["p95"]}
    assert rows[store.ids["h"]]["label_source"] == "human" and rows[store.ids["h"]]["confidence"] == ""
    assert all((dest / r["path"]).is_file() for r in rows.values())
    assert report.as_dict()["per_pool"] == {"holdout": {"B": 1}, "labeled": {"A": 2, "B": 1},
                                            "pseudo": {"B": 1}}


def test_only_labeled_by_default_and_links(store: PoolStore, tmp_path: Path) -> None:
    hard = export_data(store, tmp_path / "ws", tmp_path / "hard", link="hard")
    assert hard.as_dict()["exported"] == 3 and not (tmp_path / "hard" / "holdout").exists()
    linked = tmp_path / "hard" / "labeled" / "B" / "b1.png"
    assert os.stat(linked).st_ino == os.stat(store.paths["b1"]).st_ino
    export_data(store, tmp_path / "ws", tmp_path / "soft", link="symlink")
    soft = tmp_path / "soft" / "labeled" / "B" / "b1.png"
    assert soft.is_symlink() and os.readlink(soft) == str(store.paths["b1"])


def test_changed_and_missing_files_are_not_exported(store: PoolStore, tmp_path: Path) -> None:
    store.paths["a1"].write_bytes(b"edited after import")
    store.paths["b1"].unlink()
    report = export_data(store, tmp_path / "ws", tmp_path / "out")
    assert report.changed == [str(store.paths["a1"])] and report.missing == [str(store.paths["b1"])]
    assert [p.name for p in (tmp_path / "out").rglob("*.png")] == ["cell.png"]
    assert len(_manifest(tmp_path / "out" / "manifest.csv")) == 1
    csv_report = export_data(store, tmp_path / "ws", tmp_path / "m.csv", fmt="csv")
    assert csv_report.as_dict()["exported"] == 1 and len(csv_report.changed) == 1


def test_nothing_in_dest_is_overwritten(store: PoolStore, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    export_data(store, tmp_path / "ws", dest)
    with pytest.raises(UsageError, match="is not empty.*--force"):
        export_data(store, tmp_path / "ws", dest)
    (dest / "labeled" / "B" / "b1.png").write_bytes(b"someone else's file")
    again = export_data(store, tmp_path / "ws", dest, force=True)
    assert again.exists == [str(dest / "labeled" / "B" / "b1.png")]
    assert again.already_there == 2 and sum(again.exported.values()) == 0
    assert (dest / "labeled" / "B" / "b1.png").read_bytes() == b"someone else's file"


def test_csv_names_files_in_place(store: PoolStore, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    export_data(store, tmp_path / "ws", out, fmt="csv", pseudo_above=0.5)
    rows = _manifest(out)
    assert {r["path"] for r in rows} == {str(store.paths[k]) for k in ("a1", "a2", "b1", "p95",
                                                                      "p80")}
    with pytest.raises(UsageError, match="exists; choose another name, or --force"):
        export_data(store, tmp_path / "ws", out, fmt="csv")
    export_data(store, tmp_path / "ws", out, fmt="csv", force=True)
    assert len(_manifest(out)) == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fmt": "zip"}, "unknown format 'zip'"), ({"link": "copy2"}, "unknown link kind"),
    ({"fmt": "csv", "link": "hard"}, "--link applies to the folder format"),
    ({"pseudo_above": 1.5}, r"outside \[0, 1\]")])
def test_bad_options_are_one_line(store: PoolStore, tmp_path: Path, kwargs, message) -> None:
    with pytest.raises(UsageError, match=message):
        export_data(store, tmp_path / "ws", tmp_path / "out", **kwargs)


def test_dest_inside_the_workspace_is_refused(store: PoolStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="inside the workspace"):
        export_data(store, tmp_path / "ws", tmp_path / "ws" / "export")
    (tmp_path / "link").symlink_to(tmp_path / "ws")
    with pytest.raises(UsageError, match="inside the workspace"):
        export_data(store, tmp_path / "ws", tmp_path / "link" / "export")
