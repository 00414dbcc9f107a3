"""The model a lab uses, end to end on a tiny workspace: predict follows the best round by holdout
macro-F1, then the promoted one; `status` says which and why; `prune` and `runs.keep_last`
remove the right folders; `holdout carve` moves the right counts and `check` still passes."""

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import invoke
from test_rounds import build_workspace


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    runner = CliRunner()
    ws = build_workspace(tmp_path_factory.mktemp("models"), runner)
    for _ in range(2):
        result = invoke(runner, "round", "-w", ws, "--json")
        assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    assert any("the holdout has fewer than 10 cells" in w for w in summary["warnings"])
    return ws


def set_f1(ws: Path, round_no: int, f1: float | None) -> None:
    """Rewrite a committed round's recorded holdout macro-F1 (as another holdout would give)."""
    conn = sqlite3.connect(ws / "pools" / "pools.db")
    (text,) = conn.execute("SELECT summary FROM rounds WHERE round = ?", (round_no,)).fetchone()
    summary = json.loads(text)
    summary["metrics"] = None if f1 is None else {**(summary["metrics"] or {}), "macro_f1": f1}
    conn.execute("UPDATE rounds SET summary = ? WHERE round = ?", (json.dumps(summary), round_no))
    conn.commit()
    conn.close()


def predicted(runner, ws: Path, image: Path, *checkpoint: str) -> dict:
    result = invoke(runner, "predict", image, "-w", ws, "--json", *checkpoint)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)[0]["probabilities"]


def model_status(runner, ws: Path) -> dict:
    result = invoke(runner, "status", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_predict_uses_best_then_promoted_round(two_rounds: Path, runner) -> None:
    ws = two_rounds
    image = next((ws.parent / "cells").rglob("*.png"))
    by_round = {r: predicted(runner, ws, image, "--checkpoint", ws / "runs" / f"round-000{r}")
                for r in (1, 2)}
    assert by_round[1] != by_round[2]
    set_f1(ws, 1, 0.95)
    set_f1(ws, 2, 0.5)
    assert predicted(runner, ws, image) == by_round[1]
    status = model_status(runner, ws)
    assert status["model"]["round"] == 1 and status["model"]["reason"] == "best holdout macro-F1 0.950"
    assert "fewer than 10 cells" in status["holdout_warning"]
    text = invoke(runner, "status", "-w", ws)
    assert "model in use: round 1 (best holdout macro-F1 0.950)" in text.stdout

    result = invoke(runner, "promote", "2", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["promoted"]["round"] == 2 and data["promoted"]["by"] and data["previous"] is None
    assert predicted(runner, ws, image) == by_round[2]
    assert model_status(runner, ws)["model"]["reason"] == "promoted"

    result = invoke(runner, "promote", "9", "-w", ws)
    assert result.exit_code == 3 and "round 9 is not a finished round" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = invoke(runner, "promote", "--clear", "-w", ws, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["previous"] == 2
    assert predicted(runner, ws, image) == by_round[1]


def test_prune_then_promote_a_pruned_round_is_refused(two_rounds: Path, runner) -> None:
    ws = two_rounds
    set_f1(ws, 1, 0.4)
    set_f1(ws, 2, 0.6)
    result = invoke(runner, "prune", "--keep-last", "1", "--dry-run", "-w", ws, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["remove"] == [1]
    assert (ws / "runs" / "round-0001").is_dir()
    result = invoke(runner, "prune", "--keep-last", "1", "-w", ws, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["remove"] == [1]
    assert not (ws / "runs" / "round-0001").exists()
    result = invoke(runner, "promote", "1", "-w", ws)
    assert result.exit_code == 3 and "round 1 has no checkpoint folder" in result.stderr

    # a round prunes after its commit with runs.keep_last = 1: round 2 has no metrics now, so
    # round 3 (last, best) alone stays
    set_f1(ws, 2, None)
    config = ws / "sslall.toml"
    config.write_text(config.read_text() + "\n[runs]\nkeep_last = 1\n")
    result = invoke(runner, "round", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (ws / "runs").iterdir()) == ["round-0003"]
    assert invoke(runner, "check", "-w", ws).exit_code == 0


def test_carve_moves_per_class_and_check_passes(tmp_path: Path, runner) -> None:
    ws = build_workspace(tmp_path, runner)  # 5 labeled and 5 holdout cells a class
    result = invoke(runner, "holdout", "carve", "--fraction", "0.4", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["moved"] == {"L1": 2, "L2": 2, "L3": 2} and data["total"] == 6
    assert data["labeled"] == {"L1": 3, "L2": 3, "L3": 3}
    assert data["holdout"] == {"L1": 7, "L2": 7, "L3": 7} and "fewer than 10" in data["warning"]
    assert invoke(runner, "check", "-w", ws).exit_code == 0

    result = invoke(runner, "holdout", "carve", "--fraction", "0.9", "-w", ws)
    assert result.exit_code == 2
    assert "would leave no labeled cell of class(es) L1, L2, L3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert model_status(runner, ws)["pools"]["holdout"] == 21
