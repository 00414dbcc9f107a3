"""Pruning old round folders: the last N, the promoted and the best round are kept; a folder
of an uncommitted round is never touched; 0 keeps everything; --dry-run only plans."""

from pathlib import Path

from sslall.config import Config
from sslall.report._prune import PRUNED_PREFIX, plan_prune, prune_runs
from sslall.store._pools import PoolStore
from sslall.store._promotion import record_promotion
from sslall.store._records import RoundRecord
from sslall.workspace import Workspace, create_workspace


def make_ws(tmp_path: Path, f1s: list[float | None]) -> Workspace:
    """Committed rounds of these holdout macro-F1s, each with its folder, plus round-N+1's
    folder left by a killed round (not committed)."""
    ws = create_workspace(tmp_path / "ws", Config(classes=("A", "B")))
    with PoolStore(ws.db_path) as store:
        for r, f1 in enumerate(f1s, 1):
            metrics = None if f1 is None else {"macro_f1": f1}
            store.apply_moves([], round_no=r, record=RoundRecord(r, "t", {"metrics": metrics}))
    for r in range(1, len(f1s) + 2):
        ws.round_dir(r).mkdir(parents=True)
        (ws.round_dir(r) / "model.json").write_text("{}")
    return ws


def folders(ws: Workspace) -> list[str]:
    return sorted(p.name for p in ws.runs_dir.iterdir())


def test_keeps_last_n_promoted_and_best(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [0.6, 0.7, 0.95, 0.8, 0.5, 0.7])
    with PoolStore(ws.db_path) as store:
        record_promotion(store, 1, "ana")
        plan = prune_runs(ws, store, 2)
    assert plan.remove == [2, 4]
    assert plan.keep[1] == ["promoted", "in use"] and plan.keep[3] == ["best holdout macro-F1 0.950"]
    assert plan.keep[5] == ["one of the last 2"]
    assert folders(ws) == ["round-0001", "round-0003", "round-0005", "round-0006", "round-0007"]


def test_zero_keeps_everything_and_dry_run_touches_nothing(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [0.6, 0.7, 0.5])
    before = folders(ws)
    with PoolStore(ws.db_path) as store:
        assert prune_runs(ws, store, 0).remove == []
        plan = prune_runs(ws, store, 1, dry_run=True)
    assert plan.remove == [1] and folders(ws) == before
    assert plan.as_dict()["keep"] == [{"round": 2, "why": ["best holdout macro-F1 0.700", "in use"]},
                                      {"round": 3, "why": ["one of the last 1"]}]


def test_without_metrics_the_latest_is_kept_and_leftovers_go(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [None, None, None])
    leftover = ws.runs_dir / f"{PRUNED_PREFIX}0009"
    leftover.mkdir()
    with PoolStore(ws.db_path) as store:
        assert plan_prune(ws, store, 1).remove == [1, 2]
        prune_runs(ws, store, 1)
    assert folders(ws) == ["round-0003", "round-0004"]  # round 4 was never committed


def test_a_linked_round_folder_is_unlinked_not_followed(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, [None, None])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.json").write_text("{}")
    ws.round_dir(1).joinpath("model.json").unlink()
    ws.round_dir(1).rmdir()
    ws.round_dir(1).symlink_to(outside)
    with PoolStore(ws.db_path) as store:
        assert prune_runs(ws, store, 1).remove == [1]
    assert (outside / "model.json").is_file() and not ws.round_dir(1).exists()
