"""Long unattended use (issue 6): many consecutive rounds, watching for leaks and store growth.

Workspace: synthetic cells (3 classes, 32 px, `sslall.data._synthetic`), 5 labeled and 10 holdout per
class, the rest unlabeled; head mode on the small `baseline-cnn`, 8 epochs, budget 10 a round,
so every round trains, scores, pseudo-labels, routes and records for real, only small.

Two parts, one after the other on the same workspace:
1. In-process: `run_round` called ROUNDS times in this one Python process, as a scheduler that
   keeps sslall loaded would. After each round: open file descriptors (`/proc/self/fd`), RSS
   (`/proc/self/status` VmRSS), the store's logical size (SQLite page_count x page_size, WAL
   included) and its file size on disk, and the number of event rows. A leak shows as a slope.
2. As the nightly job runs it: `sslall --quiet round` as a subprocess, CLI_ROUNDS times; each
   child's peak RSS comes from `os.wait4`, and every round must exit 0.

Slopes are least-squares fits over the rounds after the first WARMUP (allocator and caches
settle). Targets: open fds flat (slope x rounds < 1 fd); RSS slope under 0.25 MiB a round;
store bytes linear in events (R^2 >= 0.99).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

CLASSES = ("L1", "L2", "L3")
WARMUP = 5
RSS_SLOPE_MIB = 0.25
CONFIG = """
[model]
backbone = "baseline-cnn"
pretrained = false
image_size = 32
mode = "head"

[train]
epochs = 8
batch_size = 16
patience = 4
head_ensemble = 2

[pseudo]
threshold = 0.6
knn_k = 3
knn_agreement = 0.5

[route]
budget = 10
"""


def build(root: Path, per_class: int) -> Path:
    """The workspace described in the module docstring."""
    from sslall.data._synthetic import write_dataset

    cells = root / "cells"
    samples = write_dataset(cells, CLASSES, per_class, size=32, seed=5, difficulty=0.3)
    rows: dict[str, list[tuple[str, str]]] = {"labeled": [], "holdout": [], "unlabeled": []}
    seen: dict[str, int] = {}
    for s in samples:
        k = seen[s.label] = seen.get(s.label, 0) + 1
        pool = "labeled" if k <= 5 else "holdout" if k <= 15 else "unlabeled"
        rows[pool].append((s.path.relative_to(cells).as_posix(), s.label))
    ws = root / "ws"
    _run(["init", ws, "--classes", ",".join(CLASSES)])
    text = (ws / "sslall.toml").read_text()
    (ws / "sslall.toml").write_text(text.split("\n[model]", 1)[0] + "\n" + CONFIG)
    for pool, items in rows.items():
        manifest = cells / f"{pool}.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"] if pool != "unlabeled" else ["path"])
            writer.writerows(items if pool != "unlabeled" else [(p,) for p, _ in items])
        _run(["add", pool, manifest, "-w", ws, "--workers", "1"])
    return ws


def _run(args: list) -> None:
    done = subprocess.run([*_report.sslall_exe(), "--quiet", *map(str, args)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sslall {args[0]} failed: {done.stderr.strip()}")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _store(ws: Path) -> dict:
    from sslall.store._pools import PoolStore

    with PoolStore(ws / "pools" / "pools.db") as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        page = store.conn.execute("PRAGMA page_size").fetchone()[0]
        events = store.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    on_disk = sum(p.stat().st_size for p in (ws / "pools").iterdir() if p.is_file())
    return {"logical_bytes": pages * page, "disk_bytes": on_disk, "events": events}


def in_process(ws: Path, rounds: int) -> list[dict]:
    from sslall.rounds import run_round
    from sslall.workspace import Workspace

    workspace = Workspace(ws)
    config = workspace.config()
    rows = []
    for i in range(rounds):
        t0 = time.perf_counter()
        result = run_round(workspace, config)
        rows.append({"round": result.round, "seconds": time.perf_counter() - t0,
                     "fds": len(os.listdir("/proc/self/fd")), "rss_mib": _rss_mib(),
                     **_store(ws)})
        print(f"round {i + 1}/{rounds}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def as_subprocesses(ws: Path, rounds: int) -> list[dict]:
    rows = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        proc = subprocess.Popen([*_report.sslall_exe(), "--quiet", "round", "-w", str(ws)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode:
            raise SystemExit(f"sslall round exited {proc.returncode}: {err.strip()}")
        rows.append({"seconds": time.perf_counter() - t0, "peak_rss_mib": usage.ru_maxrss / 1024,
                     **_store(ws)})
    return rows


def fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least squares y = a x + b; returns (a, b, R^2)."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    a, b = np.polyfit(xs, ys, 1)
    resid = ys - (a * xs + b)
    total = ((ys - ys.mean()) ** 2).sum()
    return float(a), float(b), float(1 - (resid ** 2).sum() / total) if total else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50, help="in-process rounds")
    ap.add_argument("--cli-rounds", type=int, default=3, help="rounds as `sslall round` processes")
    ap.add_argument("--per-class", type=int, default=200, help="synthetic cells per class")
    ap.add_argument("--quick", action="store_true", help="smoke size: 12 + 2 rounds")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    rounds, cli_rounds = (12, 2) if args.quick else (args.rounds, args.cli_rounds)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="sslall-longrun-"))
    try:
        ws = build(tmp, args.per_class)
        started = time.perf_counter()
        rows = in_process(ws, rounds)
        cli = as_subprocesses(ws, cli_rounds)
        wall = time.perf_counter() - started
        from sslall.store._integrity import check_store
        from sslall.store._pools import PoolStore

        with PoolStore(ws / "pools" / "pools.db") as store:
            violations = check_store(store, CLASSES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steady = rows[WARMUP:] if len(rows) > WARMUP + 2 else rows
    r = [float(x["round"]) for x in steady]
    fd_slope = fit(r, [x["fds"] for x in steady])[0]
    rss_slope = fit(r, [x["rss_mib"] for x in steady])[0]
    both = rows + cli
    bytes_per_event, intercept, r2 = fit([x["events"] for x in both],
                                         [x["logical_bytes"] for x in both])
    results = {
        "rounds": rounds, "cli_rounds": cli_rounds, "wall_s": round(wall, 1),
        "fds_first_last": [rows[0]["fds"], rows[-1]["fds"]], "fd_slope_per_round": fd_slope,
        "rss_first_steady_last_mib": [rows[0]["rss_mib"], steady[0]["rss_mib"],
                                      rows[-1]["rss_mib"]],
        "rss_slope_mib_per_round": rss_slope,
        "store_bytes_per_event": bytes_per_event, "store_fit_r2": r2,
        "events_first_last": [rows[0]["events"], both[-1]["events"]],
        "store_logical_first_last": [rows[0]["logical_bytes"], both[-1]["logical_bytes"]],
        "store_disk_last": both[-1]["disk_bytes"],
        "cli_peak_rss_mib": [round(x["peak_rss_mib"], 1) for x in cli],
        "cli_seconds": [round(x["seconds"], 1) for x in cli],
        "round_seconds_median": _report.median([x["seconds"] for x in rows]),
        "violations": len(violations),
    }
    ok = {"fds": abs(fd_slope) * len(steady) < 1, "rss": rss_slope < RSS_SLOPE_MIB,
          "store": r2 >= 0.99, "check": not violations}
    results["ok"] = ok
    _report.emit(results)
    if not args.no_write:
        _write(results, rows, ok, args.quick, args.per_class)


def _write(res: dict, rows: list[dict], ok: dict, quick: bool, per_class: int) -> None:
    marks = sorted({0, WARMUP, len(rows) // 2, len(rows) - 1})
    table = _report.table(
        ["round", "open fds", "RSS MiB", "events", "store KiB (logical)", "store KiB (files)",
         "round s"],
        [[rows[i]["round"], rows[i]["fds"], f"{rows[i]['rss_mib']:.1f}", rows[i]["events"],
          f"{rows[i]['logical_bytes'] / 1024:.0f}", f"{rows[i]['disk_bytes'] / 1024:.0f}",
          f"{rows[i]['seconds']:.1f}"] for i in marks])
    fds, rss = res["fds_first_last"], res["rss_first_steady_last_mib"]
    events, cli_rss = res["events_first_last"], ", ".join(map(str, res["cli_peak_rss_mib"]))
    checks = _report.table(["measure", "result", "target", "verdict"], [
        [f"open fds, round 1 -> {res['rounds']}", f"{fds[0]} -> {fds[1]} (slope "
         f"{res['fd_slope_per_round']:+.3f}/round after round {WARMUP})", "flat",
         _report.verdict(ok["fds"])],
        [f"RSS slope after round {WARMUP}", f"{res['rss_slope_mib_per_round']:+.3f} MiB/round "
         f"({rss[1]:.0f} -> {rss[2]:.0f} MiB)", f"< {RSS_SLOPE_MIB} MiB/round",
         _report.verdict(ok["rss"])],
        ["store size vs events", f"{res['store_bytes_per_event']:.0f} bytes/event, R^2 "
         f"{res['store_fit_r2']:.4f} ({events[0]} -> {events[1]} events)",
         "linear (R^2 >= 0.99)", _report.verdict(ok["store"])],
        ["`sslall check` after all rounds", f"{res['violations']} violations", "0",
         _report.verdict(ok["check"])],
        ["`sslall round` subprocesses", f"peak RSS {cli_rss} MiB; "
         f"{', '.join(map(str, res['cli_seconds']))} s", "all exit 0", _report.verdict(True)],
    ])
    body = f"""
{res['rounds']} consecutive rounds in one process (`run_round`), then {res['cli_rounds']}
more as `sslall --quiet round` subprocesses, on one workspace of synthetic cells (3 classes x
{per_class}, 32 px; 15 labeled, 30 holdout, {3 * (per_class - 15)} unlabeled; head mode on
`baseline-cnn`, budget 10). No human labels arrive, so each round routes 10 more cells to
review and re-decides the pseudo labels: the event log grows every round.

{table}

{checks}

Median in-process round: {res['round_seconds_median']:.1f} s; whole run {res['wall_s']:.0f} s.
"""
    notes = ["RSS includes torch's allocator caches; the first rounds grow while they fill, so "
             f"the slope is fitted from round {WARMUP + 1} on.",
             "Store size is SQLite's page_count x page_size (the WAL's pages included); the "
             "files on disk also hold the WAL, which SQLite checkpoints every 1000 pages.",
             "An earlier run of this script with budget 4 and 120 cells per class (about 7 "
             "events a round, under one 4 KiB page) gave R^2 0.986 with residuals of up to 3.5 "
             "pages: page granularity, not growth, dominated. Budget 10 makes a round's growth "
             "larger than a page. Same machine and load (~10) as below."]
    _report.write_section("longrun", f"Long unattended use: {res['rounds']} rounds, leaks and store growth",
                          body, quick=quick, notes=notes)


if __name__ == "__main__":
    main()
