"""A round trains and scores on the bytes it verified: a file edited after `verify` and before
it is decoded is quarantined (`changed-file`) and never trained on under its old label."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import paused, write_image
from test_reliability import assert_sound
from test_rounds import build_workspace, copy_ws
from typer.testing import CliRunner

from sslall.store._pools import PoolStore


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("round-bytes"), CliRunner())


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_file_edited_after_verify_is_quarantined_not_trained_on(
        template: Path, tmp_path: Path, num_workers: int) -> None:
    ws = copy_ws(template, tmp_path)
    config = ws / "sslall.toml"  # decoded in this process, or in a DataLoader worker
    config.write_text(config.read_text().replace("[train]\n",
                                                 f"[train]\nnum_workers = {num_workers}\n", 1))
    with PoolStore(ws / "pools" / "pools.db") as store:
        edited = next(store.samples("labeled"))
    marker = tmp_path / "paused"
    proc = paused(["round", "-w", ws, "--json"], "train", marker)  # verified, nothing decoded
    write_image(Path(edited.path), seed=777_777, size=32)  # another valid image, same name
    marker.unlink()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    with PoolStore(ws / "pools" / "pools.db") as store:
        row = store.get(edited.id)
        events = store.conn.execute("SELECT round, to_pool, reason FROM events WHERE sample_id = ?"
                                    " AND to_pool = 'quarantine'", (edited.id,)).fetchall()
    assert row.pool == "quarantine" and row.reason.startswith("changed-file")
    assert [(r, p) for r, p, _ in events] == [(1, "quarantine")]
    with (ws / "runs" / "round-0001" / "predictions.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["sample_id"] == edited.id]
    assert [(r["routed_to"], r["prediction"]) for r in rows] == [("quarantine", "")]
    assert_sound(ws)
