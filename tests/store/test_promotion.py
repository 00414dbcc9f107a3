"""The model a lab uses: the stored promotion (its log, an old store without the table) and the
choice rule (promoted, else best holdout macro-F1 with ties to the later round, else the last)."""

import sqlite3
from pathlib import Path

import pytest

from sslall.config import Config
from sslall.errors import NotFoundError
from sslall.model._choice import chosen_checkpoint, model_choice, promote_round
from sslall.store._pools import PoolStore
from sslall.store._promotion import (
    ModelChoice,
    best_round,
    choose_round,
    promoted,
    promotion_log,
    record_promotion,
)
from sslall.store._records import RoundRecord
from sslall.workspace import Workspace, create_workspace


def rounds_of(*f1s: float | None) -> list[dict]:
    return [{"round": i, "metrics": None if f1 is None else {"macro_f1": f1}}
            for i, f1 in enumerate(f1s, 1)]


def test_best_round_prefers_higher_f1_then_the_later_round() -> None:
    everything = lambda r: True  # noqa: E731
    assert best_round(rounds_of(0.8, 0.91, 0.7), everything) == (2, 0.91)
    assert best_round(rounds_of(0.9, 0.7, 0.9), everything) == (3, 0.9)
    assert best_round(rounds_of(None, None), everything) is None
    assert best_round(rounds_of(0.95, 0.8), lambda r: r != 1) == (2, 0.8)  # round 1 pruned


def test_choose_round_promoted_then_best_then_latest() -> None:
    everything = lambda r: True  # noqa: E731
    assert choose_round(rounds_of(0.9, 0.5), 2, everything) == ModelChoice(2, "promoted")
    best = choose_round(rounds_of(0.9, 0.5), None, everything)
    assert best == ModelChoice(1, "best", 0.9) and best.describe() == "best holdout macro-F1 0.900"
    assert choose_round(rounds_of(None, None, None), None, everything) == ModelChoice(3, "latest")
    assert choose_round([], None, everything) is None


def test_promotions_are_a_log_whose_last_row_is_in_force(tmp_path: Path) -> None:
    with PoolStore(tmp_path / "pools.db", create=True) as store:
        assert promoted(store) is None and promotion_log(store) == []
        record_promotion(store, 2, "ana")
        record_promotion(store, 3, "ben")
        assert promoted(store).round == 3 and promoted(store).by == "ben"
        record_promotion(store, None, "ana")
        assert promoted(store) is None
        assert [(p.round, p.by) for p in promotion_log(store)] == [(2, "ana"), (3, "ben"),
                                                                    (None, "ana")]


def test_an_old_store_without_the_table_opens_and_gains_it(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    with PoolStore(db, create=True) as store:
        store.conn.execute("DROP TABLE promotions")
    with PoolStore(db, read_only=True) as store:  # read-only: cannot add it, still answers
        assert promoted(store) is None and promotion_log(store) == []
    with PoolStore(db) as store:
        record_promotion(store, 1, "ana")
        assert promoted(store).round == 1


def make_ws(tmp_path: Path, f1s: list[float | None], folders: list[int]) -> Workspace:
    """A workspace with committed rounds of these holdout macro-F1s and these round folders."""
    ws = create_workspace(tmp_path / "ws", Config(classes=("A", "B")))
    with PoolStore(ws.db_path) as store:
        for r, f1 in enumerate(f1s, 1):
            metrics = None if f1 is None else {"macro_f1": f1}
            store.apply_moves([], round_no=r, record=RoundRecord(r, "t", {"metrics": metrics}))
    for r in folders:
        ws.round_dir(r).mkdir(parents=True)
        (ws.round_dir(r) / "model.json").write_text("{}")
    return ws


def test_the_checkpoint_follows_best_then_promotion(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [0.7, 0.92, 0.8], [1, 2, 3])
    assert chosen_checkpoint(ws) == ws.round_dir(2)
    with PoolStore(ws.db_path) as store:
        promote_round(ws, store, 3, "ana")
        assert model_choice(ws, store) == ModelChoice(3, "promoted")
    assert chosen_checkpoint(ws) == ws.round_dir(3)
    with PoolStore(ws.db_path) as store:
        promote_round(ws, store, None, "ana")
    assert chosen_checkpoint(ws) == ws.round_dir(2)


def test_promote_refuses_a_round_without_folder_or_not_committed(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [0.7, 0.9], [2])
    with PoolStore(ws.db_path) as store:
        with pytest.raises(NotFoundError, match="round 1 has no checkpoint folder"):
            promote_round(ws, store, 1, "ana")
        with pytest.raises(NotFoundError, match=r"round 5 is not a finished round \(rounds 1-2\)"):
            promote_round(ws, store, 5, "ana")
        assert promotion_log(store) == []


def test_a_promoted_round_whose_folder_vanished_is_said_not_replaced(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [0.7, 0.9], [1, 2])
    with PoolStore(ws.db_path) as store:
        promote_round(ws, store, 1, "ana")
    (ws.round_dir(1) / "model.json").unlink()
    with pytest.raises(NotFoundError, match="promoted round 1 has no checkpoint"):
        chosen_checkpoint(ws)


def test_without_holdout_metrics_the_last_round_as_before(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [None, None], [1, 2])
    assert chosen_checkpoint(ws) == ws.round_dir(2)
    empty = create_workspace(tmp_path / "empty", Config(classes=("A", "B")))
    with pytest.raises(NotFoundError, match="no round has finished yet"):
        chosen_checkpoint(empty)


def test_a_store_from_before_promotions_is_not_written_by_reads(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [0.5], [1])
    with PoolStore(ws.db_path) as store:
        store.conn.execute("DROP TABLE promotions")
    assert chosen_checkpoint(ws) == ws.round_dir(1)  # opens read-only: the table is not added
    conn = sqlite3.connect(ws.db_path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "promotions" not in tables
