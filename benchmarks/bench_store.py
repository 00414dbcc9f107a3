"""Pool-store scale: 10^6 samples imported through `PoolStore.add_samples`, then a round's store work.

Issue 4, 5e. Everything goes through the real `PoolStore` API (no direct SQL), on a workspace
made by `create_workspace`, so the figures include the store's own per-row checks and its
`events` and `aliases` rows:

1. import: 10^6 `NewSample`s (unlabeled, sha256-shaped ids, 4 classes' worth of paths) in
   batches of 10,000, one transaction per batch, as `sslall add` does;
2. `status_data()` (what `sslall status` computes) on the full store;
3. a round's snapshot: `take_snapshot` reads every scored row;
4. a round's moves: 10 % of the unlabeled pool to `pseudo`, 50 to `review`, 500 sample weights
   and the round record, in one `apply_moves` transaction (what a round commits);
5. `sslall check`'s store checks (`integrity.check_store`, rows and event replay; the paths
   here are fictitious, so the file re-hash is left out).

Peak RSS of the process is read after each step (`ru_maxrss`, it only grows).

    python benchmarks/bench_store.py                # 10^6 samples
    python benchmarks/bench_store.py --quick        # 10^5
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import time
from collections.abc import Iterator
from pathlib import Path

from _report import emit, table, work_folder, write_section

from sslall.cli._app import status_data
from sslall.config import Config
from sslall.store._pools import PoolStore
from sslall.store._records import Move, NewSample, RoundRecord, utc_now
from sslall.store._snapshot import take_snapshot
from sslall.workspace import create_workspace

CLASSES = ("Benign", "Early", "Pre", "Pro")
BATCH = 10_000


def sample_id(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "little")).hexdigest()


def new_samples(start: int, stop: int) -> Iterator[NewSample]:
    for i in range(start, stop):
        yield NewSample(sample_id(i), f"/data/smears/patient{i % 997:03d}/cell_{i:07d}.png",
                        "unlabeled", patient=f"p{i % 997:03d}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run(n: int, root: Path) -> dict:
    from sslall.store._integrity import check_store

    config = Config(classes=CLASSES)
    ws = create_workspace(root / "ws", config)
    steps: list[dict] = []

    def step(name: str, seconds: float, rows: int) -> None:
        steps.append({"step": name, "seconds": round(seconds, 2), "rows": rows,
                      "rows_per_s": round(rows / seconds) if seconds else None,
                      "peak_rss_mib": round(peak_rss_mib(), 1)})
        print(f"{name}: {seconds:.2f} s, peak RSS {peak_rss_mib():.0f} MiB", flush=True)

    with PoolStore(ws.db_path) as store:
        start = time.perf_counter()
        for lo in range(0, n, BATCH):
            store.add_samples(new_samples(lo, min(n, lo + BATCH)))
        step(f"import {n:,} samples (add_samples, batches of {BATCH:,})",
             time.perf_counter() - start, n)
    _, s = timed(status_data, ws, config)
    step("status_data() (what `sslall status` computes)", s, n)
    with PoolStore(ws.db_path) as store:
        snapshot, s = timed(take_snapshot, store, CLASSES)
        step("take_snapshot (a round reads every scored row)", s, len(snapshot.rows))
        unlabeled = [r for r in snapshot.rows if r.pool == "unlabeled"]
        n_pseudo = len(unlabeled) // 10
        moves = [Move(r.id, "pseudo", from_pool="unlabeled", label=CLASSES[i % 4],
                      label_source="pseudo", confidence=0.95, prediction=CLASSES[i % 4],
                      reason="p=0.950 >= 0.900") for i, r in enumerate(unlabeled[:n_pseudo])]
        moves += [Move(r.id, "review", from_pool="unlabeled", confidence=0.4,
                       prediction=CLASSES[0], reason="margin: among the least certain")
                  for r in unlabeled[n_pseudo:n_pseudo + 50]]
        weights = {r.id: 2.0 for r in unlabeled[n_pseudo + 50:n_pseudo + 550]}
        del snapshot, unlabeled
        _, s = timed(store.apply_moves, moves, round_no=1, weights=weights,
                     record=RoundRecord(1, utc_now(), {"round": 1}))
        step(f"a round's moves: {n_pseudo:,} to pseudo + 50 to review + 500 weights, "
             "one transaction", s, len(moves))
        sizes = store.pool_sizes()
        problems, s = timed(check_store, store, CLASSES, files=False)
        step("check_store without re-hashing files (`sslall check`'s store part)", s, n)
    db_mib = sum(p.stat().st_size for p in ws.db_path.parent.glob(ws.db_path.name + "*")) / 2**20
    return {"samples": n, "steps": steps, "pools": sizes, "store_mib": round(db_mib, 1),
            "check_problems": len(problems)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 samples")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.samples
    with work_folder(args.keep, "store") as root:
        r = run(n, root)
    per_row = (r["steps"][2]["peak_rss_mib"] - r["steps"][1]["peak_rss_mib"]) * 1024 / r["samples"]
    rows = [[s["step"], s["seconds"], f"{s['rows_per_s']:,}" if s["rows_per_s"] else "-",
             s["peak_rss_mib"]] for s in r["steps"]]
    body = "\n".join([
        "Issue 4, 5e: the pool store at scale, through the real `PoolStore` API (no direct SQL): "
        f"{r['samples']:,} samples imported, then one round's store work. Store on disk after "
        f"the round: {r['store_mib']} MiB (samples, events, aliases; SQLite WAL). Pools after: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(r["pools"].items())) + ". "
        f"`check_store` found {r['check_problems']} problem(s).",
        "",
        table(["step", "seconds", "rows/s", "peak RSS MiB (process, so far)"], rows),
        "",
        "The import's memory is flat (a generator, batches). Peak RSS grows with the snapshot: a "
        f"round holds every scored row's `Sample` in memory, about {per_row:.2f} KiB per row here "
        "as Python objects.",
    ])
    write_section("store", f"Pool store at scale: {r['samples']:,} samples", body, quick=args.quick)
    emit({"benchmark": "store", **r})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
