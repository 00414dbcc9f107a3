"""A round end to end on tiny synthetic cells, the lock, and rounds killed with SIGKILL."""

import csv
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import invoke, paused, sslall

from sslall._faults import POINTS
from sslall.data._synthetic import write_dataset
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace, round_lock

CLASSES = ("L1", "L2", "L3")

TINY_CONFIG = """
[model]
backbone = "baseline-cnn"
pretrained = false
image_size = 32
mode = "head"

[train]
epochs = 8
batch_size = 16
patience = 4

[pseudo]
threshold = 0.6
knn_k = 3
knn_agreement = 0.5

[route]
budget = 4
"""


def build_workspace(root: Path, runner, mislabel: dict[int, str] | None = None,
                    difficulty: float = 0.3) -> Path:
    """3 classes x 24 synthetic 32-px cells: 5 labeled, 5 holdout, the rest unlabeled, each.

    `mislabel` gives some labeled cells (by their row in the labeled manifest) a wrong label;
    `difficulty` is `write_dataset`'s."""
    cells = root / "cells"
    samples = write_dataset(cells, CLASSES, 24, size=32, seed=3, difficulty=difficulty)
    manifests = {p: [] for p in ("labeled", "holdout", "unlabeled")}
    count: dict[str, int] = {}
    for s in samples:
        k = count[s.label] = count.get(s.label, 0) + 1
        pool = "labeled" if k <= 5 else "holdout" if k <= 10 else "unlabeled"
        manifests[pool].append((s.path.relative_to(cells).as_posix(), s.label))
    for i, wrong in (mislabel or {}).items():
        manifests["labeled"][i] = (manifests["labeled"][i][0], wrong)
    ws = root / "ws"
    assert invoke(runner, "init", ws, "--classes", ",".join(CLASSES)).exit_code == 0
    text = (ws / "sslall.toml").read_text()
    head, _ = text.split("\n[model]", 1)
    (ws / "sslall.toml").write_text(head + "\n" + TINY_CONFIG)
    for pool, rows in manifests.items():
        path = cells / f"{pool}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"] if pool != "unlabeled" else ["path"])
            writer.writerows(rows if pool != "unlabeled" else [(r[0],) for r in rows])
        result = invoke(runner, "add", pool, path, "-w", ws, "--workers", "1")
        assert result.exit_code == 0, result.output
    return ws


@pytest.fixture
def tiny_ws(tmp_path: Path, runner) -> Path:
    return build_workspace(tmp_path, runner)


def pools_of(ws: Path) -> dict[str, int]:
    with PoolStore(ws / "pools" / "pools.db") as store:
        return store.pool_sizes()


def sample_rows(ws: Path) -> list[tuple]:
    """Every sample as (id, pool, label), sorted."""
    with PoolStore(ws / "pools" / "pools.db") as store:
        return sorted(store.conn.execute("SELECT id, pool, label FROM samples").fetchall())


def test_round_end_to_end(tiny_ws: Path, runner) -> None:
    before = pools_of(tiny_ws)
    result = invoke(runner, "round", "-w", tiny_ws, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):result.stdout.rindex("}") + 1])
    assert summary["round"] == 1
    run = tiny_ws / "runs" / "round-0001"
    for name in ("model.safetensors", "model.json", "metrics.json", "predictions.csv"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["backbone"] == "baseline-cnn"
    assert meta["temperature"] > 0 and meta["round"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "ece",
                "confusion_matrix", "per_class"):
        assert key in metrics["metrics"], key
    assert set(metrics["calibration"]) >= {"temperature", "ece_before", "ece_after"}
    assert set(metrics["seconds"]) >= {"verify", "train", "score", "calibrate", "select", "route"}
    with (run / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(before.values())
    assert set(rows[0]) == {"sample_id", "path", "pool", "label", "prediction", "confidence",
                            "margin", "entropy", "routed_to"}
    after = pools_of(tiny_ws)
    assert sum(after.values()) == sum(before.values())
    assert after["labeled"] == before["labeled"] and after["holdout"] == before["holdout"]
    assert after["review"] == 4
    assert after == summary["pools"]
    assert sslall("check", "-w", tiny_ws).returncode == 0

    status = json.loads(invoke(runner, "status", "-w", tiny_ws, "--json").stdout)
    assert status["rounds"][0]["round"] == 1 and status["latest_checkpoint"].endswith("round-0001")

    # the review queue, labelled by hand through CSV
    queue = tiny_ws / "queue.csv"
    assert invoke(runner, "review", "export", "--csv", queue, "-w", tiny_ws).exit_code == 0
    with queue.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    rows[0]["label"] = Path(rows[0]["path"]).parent.name
    rows[1]["label"] = "skip"
    rows[2]["label"] = "NotAClass"
    with queue.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = invoke(runner, "review", "import", "--csv", queue, "-w", tiny_ws, "--json")
    report = json.loads(result.stdout)
    assert (report["labeled"], report["skipped"], report["pending"]) == (1, 1, 1)
    assert "not a class" in report["rejected"][0]
    assert pools_of(tiny_ws)["review"] == 2

    # predict and evaluate with the latest checkpoint
    img = rows[3]["path"]
    result = invoke(runner, "predict", img, "-w", tiny_ws, "--json")
    assert result.exit_code == 0, result.stderr
    pred = json.loads(result.stdout)[0]
    assert pred["class"] in CLASSES and abs(sum(pred["probabilities"].values()) - 1) < 1e-3
    result = invoke(runner, "evaluate", tiny_ws.parent / "cells", "-w", tiny_ws, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 72

    # the second round reuses every cached feature and runs normally
    result = invoke(runner, "run", "--rounds", "1", "-w", tiny_ws, "--json")
    assert result.exit_code == 0, result.stderr
    assert sslall("check", "-w", tiny_ws).returncode == 0


def test_a_second_round_exits_at_once_with_the_lock_code(tiny_ws: Path) -> None:
    with round_lock(Workspace(tiny_ws), "sslall round"):
        started = time.monotonic()
        busy = sslall("round", "-w", tiny_ws)
        assert time.monotonic() - started < 30
    assert busy.returncode == 75
    assert f"pid {os.getpid()}" in busy.stderr and "already running" in busy.stderr
    status = sslall("status", "-w", tiny_ws)
    assert status.returncode == 0


def test_bad_flags_are_one_line(tiny_ws: Path, runner) -> None:
    result = invoke(runner, "round", "-w", tiny_ws, "--threshold", "1.5")
    assert result.exit_code == 2 and "'--threshold': 1.5 is out of range" in result.stderr
    result = invoke(runner, "round", "-w", tiny_ws, "--strategy", "best")
    assert result.exit_code == 2 and "allowed: margin, entropy" in result.stderr
    result = invoke(runner, "round", "-w", tiny_ws, "--budget", "-3")
    assert result.exit_code == 2 and "--budget" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_round_killed_at_any_point_leaves_the_pools_as_they_were(template_ws: Path,
                                                                tmp_path: Path, runner,
                                                                point: str) -> None:
    # Only the killed round needs its own process; the check and the recovery round run here,
    # in-process, on the same files (what a lab's next command would find).
    ws = copy_ws(template_ws, tmp_path)
    before, rows = pools_of(ws), sample_rows(ws)
    marker = tmp_path / "paused"
    proc = paused(["round", "-w", ws], point, marker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert pools_of(ws) == before
    assert sample_rows(ws) == rows      # no sample lost, doubled, moved or relabelled
    check = invoke(runner, "check", "-w", ws)
    assert check.exit_code == 0, check.output
    again = invoke(runner, "round", "-w", ws)
    assert again.exit_code == 0, again.stderr
    assert (ws / "runs" / "round-0001" / "model.safetensors").is_file()
    assert invoke(runner, "check", "-w", ws).exit_code == 0


@pytest.fixture(scope="module")
def template_ws(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    return build_workspace(tmp_path_factory.mktemp("template"), CliRunner())


def copy_ws(template: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(template.parent, tmp_path / "copy", symlinks=True)
    ws = tmp_path / "copy" / "ws"
    # manifests were imported by absolute path; point the copy's store at its own files
    with PoolStore(ws / "pools" / "pools.db") as store, store.transaction() as conn:
        conn.execute("UPDATE samples SET path = replace(path, ?, ?)",
                     (str(template.parent), str(tmp_path / "copy")))
    return ws


@pytest.mark.parametrize(("strategy", "policy"), [("bald", "adaptive"), ("coreset", "fixed"),
                                                  ("typiclust", "fixed"), ("entropy", "adaptive"),
                                                  ("least-confidence", "fixed"),
                                                  ("random", "fixed")])
def test_every_strategy_and_policy_runs_a_round(template_ws: Path, tmp_path: Path, runner,
                                                strategy: str, policy: str) -> None:
    ws = copy_ws(template_ws, tmp_path)
    result = invoke(runner, "round", "-w", ws, "--strategy", strategy, "--policy", policy,
                    "--budget", "5", "--json")
    assert result.exit_code == 0, result.stderr
    assert pools_of(ws)["review"] == 5
    assert sslall("check", "-w", ws, "--no-files").returncode == 0


def test_propagation_round_weighs_pseudo_labels_by_their_certainty(template_ws: Path,
                                                                   tmp_path: Path, runner) -> None:
    ws = copy_ws(template_ws, tmp_path)
    toml = ws / "sslall.toml"  # 72 cells: the default 50 neighbours would join every class
    toml.write_text(toml.read_text().replace("[pseudo]\n", "[pseudo]\npropagation_k = 5\n"))
    result = invoke(runner, "round", "-w", ws, "--policy", "propagation", "--threshold", "0.5",
                    "--json")
    assert result.exit_code == 0, result.stderr
    with sqlite3.connect(ws / "pools" / "pools.db") as conn:
        pseudo = conn.execute("SELECT weight, reason FROM samples WHERE pool = 'pseudo'").fetchall()
        others = conn.execute("SELECT DISTINCT weight FROM samples WHERE pool = 'unlabeled'").fetchall()
    assert pseudo, "no pseudo label at threshold 0.5 on the template workspace"
    assert all(0.0 <= w <= 1.0 and reason.startswith("propagated ") for w, reason in pseudo)
    assert others == [(1.0,)]
    assert sslall("check", "-w", ws, "--no-files").returncode == 0


def test_finetune_mode_round(template_ws: Path, tmp_path: Path, runner) -> None:
    ws = copy_ws(template_ws, tmp_path)
    result = invoke(runner, "round", "-w", ws, "--mode", "finetune", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((ws / "runs" / "round-0001" / "metrics.json").read_text())
    assert metrics["mode"] == "finetune" and metrics["device"] == "cpu"
    assert metrics["metrics"]["macro_f1"] is not None


def test_quiet_round_prints_nothing_and_logs_to_the_workspace(template_ws: Path, tmp_path: Path,
                                                               runner) -> None:
    ws = copy_ws(template_ws, tmp_path)
    result = invoke(runner, "--quiet", "round", "-w", ws)
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    log = (ws / "logs" / "sslall.log").read_text()
    assert "round step train" in log and "round 1 recorded" in log


def test_changed_file_is_quarantined_at_the_next_round(template_ws: Path, tmp_path: Path,
                                                        runner) -> None:
    ws = copy_ws(template_ws, tmp_path)
    with PoolStore(ws / "pools" / "pools.db") as store:
        victim = next(store.samples("unlabeled"))
    Path(victim.path).write_bytes(b"edited after import")
    assert invoke(runner, "round", "-w", ws).exit_code == 0
    with PoolStore(ws / "pools" / "pools.db") as store:
        sample = store.get(victim.id)
    assert sample.pool == "quarantine" and sample.reason.startswith("changed-file")


def test_round_without_labels_of_every_class_is_refused(tmp_path: Path, runner) -> None:
    ws = tmp_path / "ws"
    invoke(runner, "init", ws, "--classes", "A,B")
    result = invoke(runner, "round", "-w", ws)
    assert result.exit_code == 2 and "labeled pool is empty" in result.stderr


@pytest.mark.parametrize(("moves", "added", "changed"), [
    ({}, 0, False),
    ({"unlabeled->review": 20}, 0, False),                  # routing alone is no change
    ({"unlabeled->review": 3, "unlabeled->pseudo": 1}, 0, True),
    ({"pseudo->unlabeled": 1}, 0, True),                    # a pseudo label removed
    ({"pseudo->pseudo": 1}, 0, True),                       # relabelled
    ({"pseudo->review": 1}, 0, True),                       # removed and sent to review
    ({"unlabeled->quarantine": 1}, 0, True),
    ({"unlabeled->review": 4}, 2, True),                    # answers arrived since last round
])
def test_a_round_changed_only_when_pseudo_or_human_labels_did(moves, added, changed) -> None:
    from sslall.rounds import RoundResult

    result = RoundResult(2, Path("runs/round-0002"), moves, None, None, {}, {},
                         human_labels_added=added)
    assert result.changed is changed


def test_run_stops_early_when_a_round_only_routes(template_ws: Path, tmp_path: Path,
                                                  runner) -> None:
    """All 15 nearest human labels (5 a class) must agree: no cell ever gets a pseudo label, so
    round 1 only routes and `run --rounds 5` stops there instead of queueing 4 cells a round."""
    ws = copy_ws(template_ws, tmp_path)
    toml = ws / "sslall.toml"
    text = toml.read_text()
    assert "knn_k = 3\nknn_agreement = 0.5" in text
    toml.write_text(text.replace("knn_k = 3\nknn_agreement = 0.5", "knn_k = 15\nknn_agreement = 1.0"))
    result = invoke(runner, "run", "--rounds", "5", "-w", ws, "--json")
    assert result.exit_code == 0, result.stderr
    rounds = json.loads(result.stdout[result.stdout.index("["):result.stdout.rindex("]") + 1])
    assert [r["round"] for r in rounds] == [1]
    assert rounds[0]["moves"] == {"unlabeled->review": 4}
    assert "round 1 made no pseudo-label or label change; stopping" in result.output
    assert pools_of(ws)["review"] == 4
