"""`sslall simulate` on tiny synthetic data: the JSON report, the oracle, and a sealed test set."""

import json
import sqlite3
from pathlib import Path

from conftest import invoke

from sslall.data._synthetic import write_dataset


def test_simulate_reports_every_round_and_never_touches_the_test_set(tmp_path: Path,
                                                                    runner) -> None:
    write_dataset(tmp_path / "train", ("A", "B", "C"), 20, size=32, seed=1, difficulty=0.2)
    write_dataset(tmp_path / "test", ("A", "B", "C"), 6, size=32, seed=2, difficulty=0.2)
    out = tmp_path / "report.json"
    settings = tmp_path / "sim.toml"  # the base config; flags override it
    settings.write_text("[model]\nimage_size = 32\nbackbone = 'resnet18'\n[train]\nepochs = 7\n")
    result = invoke(runner, "simulate", tmp_path / "train", "--test-dir", tmp_path / "test",
                    "--labels-per-class", "5", "--rounds", "2", "--budget", "3", "--threshold",
                    "0.6", "--backbone", "baseline-cnn", "--config", settings, "--mode", "head",
                    "--baselines", "--work", tmp_path / "work", "--json", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["config"]["settings"]["train"]["epochs"] == 7
    assert report["config"]["image_size"] == 32 and report["config"]["backbone"] == "baseline-cnn"
    assert report["config"]["initial_pools"] == {"labeled": 9, "holdout": 6, "unlabeled": 45,
                                                 "pseudo": 0, "review": 0, "quarantine": 0}
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    first, second = report["rounds"]
    assert first["oracle_labels"] == 3 and second["labeled"] == 9 + 3
    for row in report["rounds"]:
        assert set(row["test"]) == {"accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                    "ece"}
        assert set(row) >= {"labeled", "pseudo", "review", "pseudo_precision",
                            "pseudo_precision_per_class", "seconds"}
    assert report["baselines"]["supervised_all_labels"]["labels"] == 60
    assert report["baselines"]["supervised_same_labels"]["labels"] == 15
    # what the last round trained on: 9 starting + 3 bought after round 1, and the 6 holdout
    assert report["baselines"]["supervised_final_labels"]["labels"] == 9 + 3 + 6
    db = sqlite3.connect(tmp_path / "work" / "workspace" / "pools" / "pools.db")
    paths = [p for (p,) in db.execute("SELECT path FROM samples")]
    assert len(paths) == 60 and not any("/test/" in p for p in paths)
    labels_from_oracle = db.execute(
        "SELECT COUNT(*) FROM events WHERE actor = 'oracle'").fetchone()[0]
    assert labels_from_oracle == 6


def test_simulate_needs_exactly_one_starting_size(tmp_path: Path, runner) -> None:
    result = invoke(runner, "simulate", tmp_path, "--test-dir", tmp_path)
    assert result.exit_code == 2 and "exactly one of --label-fraction" in result.stderr


def test_simulate_config_file_errors_name_the_key(tmp_path: Path, runner) -> None:
    settings = tmp_path / "sim.toml"
    settings.write_text("[train]\nepoch = 7\n")
    result = invoke(runner, "simulate", tmp_path, "--test-dir", tmp_path, "--labels-per-class",
                    "2", "--config", settings)
    assert result.exit_code != 0 and "train.epoch" in result.stderr and "epochs" in result.stderr
    assert "Traceback" not in result.stderr
