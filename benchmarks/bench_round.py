"""Two full self-training rounds (`run_round`) on a workspace built from all-taleqani.

Workspace: all-taleqani (4 classes), split per class with a fixed seed into 5 % labeled,
20 % holdout and the rest unlabeled. The importer refuses manifest paths that resolve outside
the manifest's folder (symlinks included), and the data folder is shared and read-only, so the
sources are temp folders of symlinks, one per image, in class sub-folders (`sslall add` follows
symlinked files in a folder source). Head mode, tf_efficientnet_lite0 at 224 px, CPU, every
other setting the `sslall init` default. Round 1 computes every feature; round 2 reads them
from the feature cache: each step's seconds come from the round's own `seconds`.

Target (issue 3): a second round on an unchanged pool spends >= 10x less time scoring than the
first. In head mode scoring a round's pool is `extract_features` over every sample (called
from the train step, timed here by wrapping `sslall.model._learner.extract_features`) plus the score
step (the head over those features).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

CLASSES = ("Benign", "Early", "Pre", "Pro")
SPLIT = {"labeled": 0.05, "holdout": 0.20}
STEPS = ("verify", "train", "score", "calibrate", "select", "route", "record")
TARGET_SPEEDUP = 10.0


def time_feature_extraction() -> list[float]:
    """Wrap `sslall.model._learner.extract_features`; returns the list each call's seconds go to."""
    import sslall.model._learner

    calls: list[float] = []
    inner = sslall.model._learner.extract_features

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - t0)

    sslall.model._learner.extract_features = timed
    return calls


def build_sources(data: Path, out: Path, fraction: float, seed: int) -> dict[str, dict[str, int]]:
    """Symlink folders out/{labeled,holdout,unlabeled}/<class>/ with a stratified split."""
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {p: {} for p in ("labeled", "holdout", "unlabeled")}
    for c in CLASSES:
        files = sorted(p for p in (data / c).iterdir() if p.is_file())
        files = [files[i] for i in rng.permutation(len(files))]
        files = files[: max(8, round(fraction * len(files)))]
        n_hold = round(SPLIT["holdout"] * len(files))
        n_lab = max(1, round(SPLIT["labeled"] * len(files)))
        parts = {"holdout": files[:n_hold], "labeled": files[n_hold:n_hold + n_lab],
                 "unlabeled": files[n_hold + n_lab:]}
        for pool, chosen in parts.items():
            folder = out / pool / c
            folder.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                os.symlink(f, folder / f.name)
            counts[pool][c] = len(chosen)
    return counts


def sslall(*args: str) -> dict:
    exe = _report.sslall_exe()
    t0 = time.perf_counter()
    proc = subprocess.run([*exe, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sslall {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = {"seconds": time.perf_counter() - t0}
    if "--json" in args:
        out["json"] = json.loads(proc.stdout)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="fraction of all-taleqani to use (per class)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke size: 10 %% of the images")
    ap.add_argument("--keep", action="store_true", help="keep the temp workspace")
    args = ap.parse_args()
    fraction = 0.1 if args.quick else args.fraction

    from sslall.config import with_overrides
    from sslall.rounds import run_round
    from sslall.workspace import Workspace

    data = _report.data_root() / "all-taleqani"
    if not data.is_dir():
        raise SystemExit(f"{data} not found; set SSLALL_DATA (see ../shared/data/README.md)")
    tmp = Path(tempfile.mkdtemp(prefix="sslall-bench-round-", dir="/tmp"))
    try:
        src, wsdir = tmp / "src", tmp / "ws"
        split = build_sources(data, src, fraction, args.seed)
        sslall("init", str(wsdir), "--classes", ",".join(CLASSES))
        imports = {}
        for pool in ("labeled", "holdout", "unlabeled"):
            r = sslall("add", pool, str(src / pool), "-w", str(wsdir), "--json")
            imports[pool] = {"seconds": r["seconds"], "added": r["json"]["added"],
                             "duplicates": len(r["json"]["duplicates"]),
                             "quarantined": len(r["json"]["quarantined"])}
        ws = Workspace(wsdir)
        config = with_overrides(ws.config(), model={"mode": "head", "device": "cpu"})
        rounds = []
        feature_calls = time_feature_extraction()
        for _ in range(args.rounds):
            feature_calls.clear()
            t0 = time.perf_counter()
            result = run_round(ws, config)
            wall = time.perf_counter() - t0
            features_s = sum(feature_calls)
            metrics_file = json.loads((result.run_dir / "metrics.json").read_text())
            train = metrics_file.get("train", {})
            rounds.append({
                "round": result.round, "wall_s": wall, "seconds": dict(result.seconds),
                "features_s": features_s, "scoring_s": features_s + result.seconds.get("score", 0.0),
                "head_fit_s": train.get("seconds"), "epochs_run": train.get("epochs_run"),
                "train_rows": train.get("train_rows"),
                "macro_f1": (result.metrics or {}).get("macro_f1"),
                "accuracy": (result.metrics or {}).get("accuracy"),
                "ece": (result.metrics or {}).get("ece"),
                "moves": result.moves, "pools": result.pools,
            })
            print(f"  round {result.round}: {wall:.1f} s {result.seconds}", file=sys.stderr)
        n_images = sum(sum(v.values()) for v in split.values())
        r1, r2 = rounds[0], rounds[-1]
        speedup = {k: (r1["seconds"][k] / r2["seconds"][k]) if r2["seconds"].get(k) else None
                   for k in ("train", "score")}
        speedup["round"] = r1["wall_s"] / r2["wall_s"]
        speedup["scoring"] = r1["scoring_s"] / r2["scoring_s"]
        results = {"bench": "round", "images": n_images, "split": split, "imports": imports,
                   "rounds": rounds, "speedup_round1_over_last": speedup,
                   "backbone": config.model.backbone, "image_size": config.model.image_size,
                   "num_workers": config.train.num_workers,
                   "settings": {"epochs": config.train.epochs, "patience": config.train.patience,
                                "feature_scales": config.model.feature_scales,
                                "head_ensemble": getattr(config.train, "head_ensemble", 1),
                                "threshold": config.pseudo.threshold,
                                "strategy": config.route.strategy, "budget": config.route.budget},
                   "target_met": speedup["scoring"] >= TARGET_SPEEDUP}
        _report.emit(results)
        _write(results, args.quick)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _write(r: dict, quick: bool) -> None:
    rounds = r["rounds"]
    headers = ["step (s)", *[f"round {x['round']}" for x in rounds], "round 1 / last"]
    rows = []
    for step in STEPS:
        vals = [x["seconds"].get(step) for x in rounds]
        ratio = f"{vals[0] / vals[-1]:.1f}x" if vals[-1] else "-"
        rows.append([step, *[f"{v:.2f}" if v is not None else "-" for v in vals], ratio])
    rows.append(["**scoring: `extract_features` + score step**",
                 *[f"**{x['scoring_s']:.2f}**" for x in rounds],
                 f"**{rounds[0]['scoring_s'] / rounds[-1]['scoring_s']:.0f}x**"])
    rows.append(["· of train: `extract_features`", *[f"{x['features_s']:.2f}" for x in rounds],
                 f"{rounds[0]['features_s'] / rounds[-1]['features_s']:.0f}x"])
    rows.append(["· of train: head fit (train_report.seconds)",
                 *[f"{x['head_fit_s']:.2f}" if x["head_fit_s"] is not None else "-" for x in rounds], ""])
    walls = [x["wall_s"] for x in rounds]
    rows.append(["**whole round (wall)**", *[f"**{w:.1f}**" for w in walls],
                 f"**{walls[0] / walls[-1]:.1f}x**"])
    rows.append(["· wall - sum of steps (snapshot, pool sizes; round 1: first torch/timm import)",
                 *[f"{x['wall_s'] - sum(x['seconds'].values()):.2f}" for x in rounds], ""])
    rows.append(["holdout macro-F1", *[f"{x['macro_f1']:.3f}" if x["macro_f1"] is not None else "-"
                                       for x in rounds], ""])
    rows.append(["holdout accuracy", *[f"{x['accuracy']:.3f}" if x["accuracy"] is not None else "-"
                                       for x in rounds], ""])
    rows.append(["holdout ECE (calibrated)", *[f"{x['ece']:.3f}" if x["ece"] is not None else "-"
                                               for x in rounds], ""])
    rows.append(["train rows (labeled + pseudo)", *[str(x["train_rows"]) for x in rounds], ""])
    rows.append(["moves", *["<br>".join(f"{k}: {v}" for k, v in x["moves"].items()) or "none"
                            for x in rounds], ""])
    t = _report.table(headers, rows)
    split = "; ".join(f"{pool} {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.items())})"
                      for pool, c in r["split"].items())
    imp = ", ".join(f"{p} {v['seconds']:.1f} s" for p, v in r["imports"].items())
    dup = sum(v["duplicates"] for v in r["imports"].values())
    sp = r["speedup_round1_over_last"]
    body = "\n".join([
        f"{r['images']:,} all-taleqani images split per class (seed 0): {split}. Imports (`sslall "
        f"add`, subprocess): {imp}; {dup} byte-identical duplicate(s) reported and stored once. "
        f"Head mode, {r['backbone']} at {r['image_size']} px, CPU, default config otherwise "
        f"({', '.join(f'{k} {v}' for k, v in r['settings'].items())}).",
        "",
        f"Target: a second round on an unchanged pool spends >= {TARGET_SPEEDUP:.0f}x less time "
        f"scoring than the first: {_report.verdict(r['target_met'])} ({sp['scoring']:,.0f}x: "
        f"{rounds[0]['scoring_s']:.1f} s, then {rounds[-1]['scoring_s']:.2f} s). Round 1 computes "
        "every image's features; round 2 reads them from the cache. Scoring here is "
        "`extract_features` over the whole pool (run inside the train step in head mode) plus the "
        f"score step; DataLoader num_workers = {r['num_workers']} (the config default). Train step "
        f"{sp['train']:.1f}x faster, whole round {sp['round']:.1f}x.",
        "",
        t,
    ])
    _report.write_section("round", "Rounds: `run_round` on all-taleqani, cold then cached features",
                          body, quick=quick,
                          notes=["`verify` re-hashes every file each round (by design); `score` in "
                                 "head mode reuses the features computed in `train`."])


if __name__ == "__main__":
    main()
