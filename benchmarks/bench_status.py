"""`sslall status` on a pool store of 10^6 samples.

Target: `sslall status` answers in < 1 s with 10^6 samples in the store.

The store is created by `sslall init` (so by `PoolStore(create=True)`, the real schema), then
filled by direct SQL with what `PoolStore.add_samples` writes for each sample — a `samples` row,
its first `events` row and its `aliases` row — plus ten finished rounds in `rounds`. The pools
follow a store a few rounds into its life (70 % unlabeled, 20 % pseudo, 3 % labeled, 1 %
holdout, ...) over 4 imbalanced classes. Then, as subprocesses, each 5 times (median):
`sslall status --json -w WS`, `sslall status -w WS` (the table), `python -c "import sslall.cli"`
(the import overhead) and `python -c pass` (the interpreter); plus `status_data()` in-process
(the queries alone).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

TARGET_S = 1.0
CLASSES = ("Benign", "Early", "Pre", "Pro")
CLASS_P = (0.15, 0.30, 0.30, 0.25)
POOL_P = {  # a store a few rounds into its life
    "unlabeled": 0.7585, "pseudo": 0.20, "labeled": 0.03, "holdout": 0.01,
    "review": 0.0005, "quarantine": 0.001,
}
ROUNDS = 10


def build_store(ws: Path, n: int, seed: int = 0) -> dict:
    """Fill the workspace's (empty) store with n samples the way add_samples writes them."""
    from sslall.store._pools import PoolStore
    from sslall.store._records import utc_now

    rng = np.random.default_rng(seed)
    pools = np.array(list(POOL_P))
    pool_idx = rng.choice(len(pools), size=n, p=np.array(list(POOL_P.values())))
    label_idx = rng.choice(len(CLASSES), size=n, p=CLASS_P)
    conf = rng.uniform(0.9, 1.0, size=n)
    rnd = rng.integers(1, ROUNDS + 1, size=n)
    now = utc_now()
    t0 = time.perf_counter()
    store = PoolStore(ws / "pools" / "pools.db")
    conn = store.conn
    conn.execute("PRAGMA synchronous=OFF")  # building only; status opens it as sslall does

    def rows() -> Iterator[tuple]:
        for i in range(n):
            sid = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
            pool = str(pools[pool_idx[i]])
            path = f"/data/ward7/cells/batch{i // 10_000:03d}/cell{i:07d}.png"
            label = CLASSES[label_idx[i]] if pool in ("labeled", "holdout", "pseudo") else None
            source = {"labeled": "import", "holdout": "import", "pseudo": "machine"}.get(pool)
            confidence = float(conf[i]) if pool == "pseudo" else None
            round_no = int(rnd[i]) if pool in ("pseudo", "review") else 0
            reason = "undecodable: cannot be decoded: truncated" if pool == "quarantine" else None
            yield (sid, path, pool, label, source, confidence, round_no, reason, now, now)

    counts: dict[str, int] = {}
    with store.transaction():
        batch: list[tuple] = []
        for row in rows():
            batch.append(row)
            counts[row[2]] = counts.get(row[2], 0) + 1
            if len(batch) >= 50_000:
                _insert(conn, batch, now)
                batch = []
        _insert(conn, batch, now)
        for r in range(1, ROUNDS + 1):
            summary = _round_summary(r, counts)
            conn.execute("INSERT INTO rounds (round, started_at, finished_at, summary) VALUES (?, ?, ?, ?)",
                         (r, now, now, json.dumps(summary)))
    store.close()  # the last close checkpoints the WAL into the main file
    build_s = time.perf_counter() - t0
    return {"build_s": build_s, "pools": counts,
            "db_mib": _report.mib((ws / "pools" / "pools.db").stat().st_size)}


def _insert(conn: sqlite3.Connection, batch: list[tuple], now: str) -> None:
    conn.executemany(
        "INSERT INTO samples (id, path, pool, label, label_source, confidence, round, reason,"
        " added_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
    conn.executemany(
        "INSERT INTO events (time, round, sample_id, from_pool, to_pool, label, confidence, reason,"
        " actor) VALUES (?, 0, ?, NULL, ?, ?, NULL, ?, 'import')",
        [(now, r[0], r[2], r[3], r[7] or "added") for r in batch])
    conn.executemany(
        "INSERT OR IGNORE INTO aliases (path, sample_id, label, added_at) VALUES (?, ?, ?, ?)",
        [(r[1], r[0], r[3], now) for r in batch])


def _round_summary(r: int, counts: dict[str, int]) -> dict:
    per = {c: round(0.9 + 0.01 * i, 3) for i, c in enumerate(CLASSES)}
    return {
        "round": r, "run_dir": f"/data/ward7/runs/round-{r:04d}",
        "moves": {"unlabeled->pseudo": 20_000, "pseudo->unlabeled": 300, "unlabeled->review": 20},
        "metrics": {"accuracy": 0.93, "balanced_accuracy": 0.92, "macro_f1": 0.92, "weighted_f1": 0.93,
                    "ece": 0.03, "per_class": {c: {"precision": p, "recall": p, "f1": p,
                                                   "specificity": p} for c, p in per.items()},
                    "confusion": [[100, 2, 1, 0], [3, 200, 5, 0], [0, 4, 198, 2], [0, 0, 3, 150]]},
        "previous_metrics": None, "pools": counts,
        "seconds": {"verify": 30.0, "train": 12.0, "score": 2.0, "calibrate": 0.1, "select": 3.0,
                    "route": 1.0, "record": 9.0},
        "mode": "head", "device": "cpu", "thresholds": dict.fromkeys(CLASSES, 0.9),
    }


def time_cmd(cmd: list[str], repeat: int) -> tuple[list[float], str]:
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        out = proc.stdout
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="smoke size: 100,000 samples, 3 repeats")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the temp workspace")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.samples
    repeat = 3 if args.quick else args.repeat
    exe = _report.sslall_exe()
    py = sys.executable

    tmp = Path(tempfile.mkdtemp(prefix="sslall-bench-status-", dir="/tmp"))
    try:
        ws = tmp / "ws"
        _report.sslall_init(ws, CLASSES)
        built = build_store(ws, n)
        print(f"built {n:,} samples in {built['build_s']:.1f} s ({built['db_mib']} MiB)",
              file=sys.stderr)
        # warm the page cache once (a status right after a round finds the db cached too)
        subprocess.run([*exe, "status", "--json", "-w", str(ws)], check=True, capture_output=True)
        results = {"bench": "status", "samples": n, **{k: v for k, v in built.items() if k != "pools"}}
        timings = {}
        for name, cmd in (
            ("python -c pass", [py, "-c", "pass"]),
            ("python -c 'import sslall.cli'", [py, "-c", "import sslall.cli"]),
            ("sslall status --json", [*exe, "status", "--json", "-w", str(ws)]),
            ("sslall status (table)", [*exe, "status", "-w", str(ws)]),
        ):
            times, out = time_cmd(cmd, repeat)
            timings[name] = times
            if name == "sslall status --json":
                data = json.loads(out)
                total = sum(data["pools"].values())
                if total != n:
                    raise SystemExit(f"status reports {total} samples, expected {n}")
        from sslall.cli._app import status_data
        from sslall.workspace import Workspace

        wsobj = Workspace(ws)
        config = wsobj.config()
        inproc = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            status_data(wsobj, config)
            inproc.append(time.perf_counter() - t0)
        timings["status_data() in-process (queries only)"] = inproc
        med = {k: _report.median(v) for k, v in timings.items()}
        results |= {"median_s": med, "all_s": timings, "target_s": TARGET_S,
                    "target_met": med["sslall status --json"] < TARGET_S
                    and med["sslall status (table)"] < TARGET_S}
        _report.emit(results)
        _write(results, built, args.quick, repeat)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


def _write(r: dict, built: dict, quick: bool, repeat: int) -> None:
    med, alls = r["median_s"], r["all_s"]
    t = _report.table(
        ["command", "median s", "min s", "max s"],
        [[f"`{k}`", f"{med[k]:.3f}", f"{min(alls[k]):.3f}", f"{max(alls[k]):.3f}"] for k in med],
    )
    pools = ", ".join(f"{p} {c:,}" for p, c in sorted(built["pools"].items(), key=lambda kv: -kv[1]))
    js, tb = med["sslall status --json"], med["sslall status (table)"]
    imp = med["python -c 'import sslall.cli'"]
    body = "\n".join([
        f"Target: `sslall status` on {r['samples']:,} samples answers in < {TARGET_S:g} s: "
        f"{_report.verdict(r['target_met'])} (median {js:.2f} s with `--json`, {tb:.2f} s as a "
        f"table; of which interpreter + `import sslall.cli` is "
        f"{imp:.2f} s).",
        "",
        f"Store: {r['samples']:,} samples, one event and one alias row each, {ROUNDS} rounds; "
        f"pools {pools}; 4 classes (15/30/30/25 %); {built['db_mib']:,} MiB; built by direct SQL "
        f"in {built['build_s']:.0f} s. Each command run {repeat} times as a subprocess after one "
        "warm-up (page cache warm):",
        "",
        t,
    ])
    _report.write_section("status", "`sslall status` on 10^6 samples", body, quick=quick)


if __name__ == "__main__":
    main()
