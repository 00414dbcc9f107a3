"""`sslall demo`: the whole loop on synthetic cells, and its refusals (tiny settings)."""

from pathlib import Path

from conftest import invoke

from sslall.store._pools import PoolStore

TINY = ("--per-class", "40", "--backbone", "baseline-cnn", "--image-size", "32", "--classes", "A,B")


def test_demo_builds_a_workspace_runs_a_round_and_answers_its_review_queue(tmp_path: Path,
                                                                          runner) -> None:
    result = invoke(runner, "demo", tmp_path / "d", "--rounds", "1", *TINY)
    assert result.exit_code == 0, result.output
    assert "round 1: macro-F1" in result.output
    with PoolStore(tmp_path / "d" / "workspace" / "pools" / "pools.db") as store:
        sizes = store.pool_sizes()
        assert store.last_round() == 1
    # 8 labeled + 30 holdout per class; the 4 unlabeled cells went to review and were answered
    assert sizes["holdout"] == 60
    assert sizes["labeled"] + sizes.get("pseudo", 0) == 20 and sizes.get("review", 0) == 0
    assert (tmp_path / "d" / ".sslall-demo").exists()


def test_demo_refuses_a_second_run_without_fresh_and_a_foreign_folder(tmp_path: Path,
                                                                     runner) -> None:
    assert invoke(runner, "demo", tmp_path / "d", "--rounds", "0", *TINY).exit_code == 0
    again = invoke(runner, "demo", tmp_path / "d", "--rounds", "0", *TINY)
    assert again.exit_code == 2 and "pass --fresh" in again.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = invoke(runner, "demo", foreign, *TINY)
    assert refused.exit_code == 2 and "not an sslall demo folder" in refused.output
    assert (foreign / "notes.txt").read_text() == "keep me"
    small = invoke(runner, "demo", tmp_path / "s", "--per-class", "10")
    assert small.exit_code == 2 and "at least 40" in small.output
    assert not (tmp_path / "s").exists()
