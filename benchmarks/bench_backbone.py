"""One backbone in head and last-stage mode on real cells: macro-F1 from 2 % and all labels, images/s.

For each backbone (default: the three offline EfficientNet-Lite variants), each data set and each
mode, `sslall simulate --baselines` runs one round from a stratified 2 % of the training split
(the same split as bench_simulate: a 20 % test set, split seed 0, that nothing is chosen on) and
reports the same backbone and mode trained on those starting labels alone ("2 % labels") and
on every training label ("all labels"), plus the loop's first round. Every backbone runs at its
own input size (lite0 224, lite1 240, lite2 260 px) unless --image-size says otherwise. Images/s
is measured in-process: decode, eval transform and the frozen backbone's forward pass, batch
32, on up to 256 training images (one warm-up batch left out): what scoring a pool costs, and
what head mode's feature extraction and last-stage mode's frozen maps cost once per image.
One BENCHMARKS.md section (`backbone-lite`) holds every backbone, set and mode.

    python benchmarks/bench_backbone.py --backbones tf_efficientnet_lite1 --keep /tmp/bbb
    python benchmarks/bench_backbone.py --sets pbc --modes last-stage --seeds 0
    python benchmarks/bench_backbone.py --quick                 # 24 images per class

With --keep, each backbone, set and mode's figures are saved there and reused by a later run
with the same seeds, fraction and image size, so the measurements can be taken in pieces and
one last run (`--saved-only`: nothing new is trained) writes the section from all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from _report import data_root, emit, sslall_exe, table, work_folder, write_section
from bench_efficiency import mean_sd
from bench_simulate import split

from sslall.data._datasets import ImageDataset, eval_transform, make_loader
from sslall.model._backbones import create_backbone

SETS = {"taleqani": "all-taleqani", "pbc": "pbc-128"}
MODES = ("head", "last-stage")
LITES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
BUDGET = 20  # one round's oracle labels; the figures reported do not depend on it


def images_per_s(backbone_name: str, train: Path, size: int | None, limit: int) -> tuple[float, int]:
    """(images/s of decode + transform + frozen forward, the input side used)."""
    backbone = create_backbone(backbone_name, pretrained=True)
    side = size or backbone.input_size
    files = sorted(p for p in train.rglob("*") if p.is_file())
    files = [files[int(i * len(files) / limit)] for i in range(min(limit, len(files)))]
    dataset = ImageDataset([str(p) for p in files], eval_transform(side, backbone.mean, backbone.std),
                           max_pixels=10**8)
    module = backbone.module.eval()
    counted, started = 0, 0.0
    with torch.inference_mode():
        for i, (x, _) in enumerate(make_loader(dataset, batch_size=32, num_workers=0)):
            if i == 1:
                started = time.perf_counter()
            module(x)
            counted += len(x) if i else 0
    seconds = time.perf_counter() - started
    return (counted / seconds if counted else float("nan")), side


def simulate(train: Path, test: Path, *, backbone: str, mode: str, size: int, seed: int,
             fraction: float, cache: Path, work: Path) -> tuple[dict, float]:
    """One `sslall simulate --rounds 1 --baselines` subprocess: (its JSON report, wall seconds)."""
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    report = work.with_suffix(".json")
    cmd = [*sslall_exe(), "-q", "simulate", str(train), "--test-dir", str(test),
           "--label-fraction", str(fraction), "--rounds", "1", "--budget", str(BUDGET),
           "--backbone", backbone, "--mode", mode, "--image-size", str(size), "--seed", str(seed),
           "--work", str(work), "--cache", str(cache), "--out", str(report), "--baselines"]
    print(" ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(report.read_text()), seconds


def run_seeds(train: Path, test: Path, *, backbone: str, mode: str, size: int,
              args: argparse.Namespace, cache: Path, runs: Path) -> dict:
    """One backbone and mode over the chosen seeds: the figures of its row."""
    done = [simulate(train, test, backbone=backbone, mode=mode, size=size, seed=seed,
                     fraction=args.fraction, cache=cache, work=runs / f"{backbone}-{mode}-s{seed}")
            for seed in args.seeds]
    base = [r["baselines"] for r, _ in done]
    return {
        "mode": mode, "image_size": size, "seeds": args.seeds,
        "start_labels": [b["supervised_same_labels"]["labels"] for b in base],
        "all_labels": [b["supervised_all_labels"]["labels"] for b in base],
        "macro_f1_start": [b["supervised_same_labels"]["macro_f1"] for b in base],
        "macro_f1_all": [b["supervised_all_labels"]["macro_f1"] for b in base],
        "macro_f1_loop_round1": [r["rounds"][-1]["test"]["macro_f1"] for r, _ in done],
        "seconds": [s for _, s in done],
        "load_average": list(os.getloadavg()),
    }


def measure(backbone: str, args: argparse.Namespace, root: Path) -> list[dict]:
    """The figures of one backbone over the chosen sets and modes (one dict per set and mode)."""
    out = []
    for name in args.sets:
        here = root / name
        if not (here / "data" / "test").is_dir():
            shutil.rmtree(here / "data", ignore_errors=True)
            split(data_root() / SETS[name], here / "data", per_class=24 if args.quick else None)
        train, test = here / "data" / "train", here / "data" / "test"
        speed, size = images_per_s(backbone, train, args.image_size, 64 if args.quick else 256)
        for mode in args.modes:
            saved = here / "results" / f"{backbone}-{mode}-{size}px-{args.fraction:g}.json"
            figures = json.loads(saved.read_text()) if saved.is_file() else None
            if figures is None or figures["seeds"] != args.seeds:
                if args.saved_only:
                    continue
                figures = run_seeds(train, test, backbone=backbone, mode=mode, size=size,
                                    args=args, cache=here / "cache", runs=here / "runs")
                figures["set"] = name
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps(figures, indent=1))
            # images/s comes from this run, measured side by side with the other backbones
            out.append({**figures, "backbone": backbone, "images_per_s": speed})
    return out


def report(figures: list[dict], args: argparse.Namespace) -> str:
    """The section's text: what was measured and one row per data set, mode and backbone."""
    share = f"{args.fraction * 100:g} %"
    rows = [[SETS[f["set"]], f["mode"], f"`{f['backbone']}`", f["image_size"],
             round(float(np.mean(f["start_labels"]))), mean_sd(f["macro_f1_start"]),
             f["all_labels"][0], mean_sd(f["macro_f1_all"]), mean_sd(f["macro_f1_loop_round1"]),
             f"{f['images_per_s']:.1f}", ", ".join(f"{s:.0f}" for s in f["seconds"])]
            for f in sorted(figures, key=lambda f: (f["set"], MODES.index(f["mode"]),
                                                    f["backbone"]))]
    return "\n".join([
        f"Offline ImageNet weights; seeds {args.seeds}; macro-F1 on the test split (mean ± sd "
        f"where more than one seed). \"{share} labels\" = the backbone in that mode trained on "
        "the starting labels alone (holdout included in the count); \"all labels\" = on every "
        "training label; \"loop, round 1\" = one round of the loop from the starting labels. "
        "Images/s = decode, eval transform and the frozen forward pass at the backbone's own size, "
        "batch 32, one process on this machine, measured side by side in the last run. Wall "
        "time per seed is the whole `simulate` (one round and three baselines); the first seed "
        "of a backbone and mode also extracts the features (head) or the maps of both views "
        "(last-stage, turned view on) of every image.", "",
        table(["data set", "mode", "backbone", "px", "start labels", f"macro-F1, {share} labels",
               "all labels", "macro-F1, all labels", "macro-F1, loop round 1", "images/s",
               "wall s per seed"], rows), ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=list(LITES))
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["taleqani", "pbc"])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--fraction", type=float, default=0.02, help="starting label fraction")
    ap.add_argument("--image-size", type=int, default=None, help="input side (default: each backbone's)")
    ap.add_argument("--quick", action="store_true", help="24 images per class, one seed")
    ap.add_argument("--keep", type=Path, help="keep splits, caches and reports here (and reuse them)")
    ap.add_argument("--saved-only", action="store_true",
                    help="report only what --keep already holds; measure nothing but images/s")
    args = ap.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
    with work_folder(args.keep, "backbone") as root:
        figures = [f for backbone in args.backbones for f in measure(backbone, args, root)]
    write_section("backbone-lite", "Offline backbones: efficientnet-lite0/1/2 in head and "
                  f"last-stage mode, from {args.fraction * 100:g} % and from all labels",
                  report(figures, args), quick=args.quick)
    emit({"benchmark": "backbone", "results": figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
