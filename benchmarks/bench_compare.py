"""Backbones compared on all-taleqani: `sslall compare` in head mode (issue 7).

Two runs of the real CLI in subprocesses, on the same split and seed: the issue's backbones plus
the offline default with pretrained weights (`SSLALL_OFFLINE=1`: this machine has no network,
so every backbone but tf_efficientnet_lite0 is reported as not run, in one line each), then a
random-weights floor (frozen, randomly initialised backbones) to show what the pretrained
features are worth.

    python benchmarks/bench_compare.py                  # every image of all-taleqani
    python benchmarks/bench_compare.py --per-class 150  # a seeded subset
    python benchmarks/bench_compare.py --quick          # 24 images per class
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import data_root, emit, sslall_exe, write_section

ISSUE = "resnet18,efficientnet_b0,vgg16,densenet201,vit_base_patch16_224"
PRETRAINED = f"tf_efficientnet_lite0,{ISSUE}"
RANDOM = "tf_efficientnet_lite0,resnet18,baseline-cnn"


def subset(source: Path, dest: Path, per_class: int, seed: int = 0) -> Path:
    """A class-per-folder tree of symlinks: `per_class` seeded picks of each class."""
    rng = np.random.default_rng(seed)
    for cls in sorted(d.name for d in source.iterdir() if d.is_dir()):
        files = sorted(p for p in (source / cls).iterdir() if p.is_file())
        (dest / cls).mkdir(parents=True)
        for i in rng.permutation(len(files))[:per_class]:
            (dest / cls / files[i].name).symlink_to(files[i].resolve())
    return dest


def compare(data: Path, backbones: str, weights: str, out: Path,
            extra: list[str] | None = None) -> tuple[dict, str, float]:
    """One `sslall compare` subprocess: (compare.json, compare.md, wall seconds)."""
    cmd = [*sslall_exe(), "-q", "compare", "--backbones", backbones, "--mode", "head",
           "--weights", weights, "--data", str(data), "--out", str(out), *(extra or [])]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "SSLALL_OFFLINE": "1"}, cwd=out.parent)
    seconds = time.perf_counter() - started
    return (json.loads((out / "compare.json").read_text()), (out / "compare.md").read_text(),
            seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=0, help="images per class (0 = all)")
    parser.add_argument("--quick", action="store_true", help="24 images per class")
    args = parser.parse_args()
    per_class = 24 if args.quick else args.per_class
    source = data_root() / "all-taleqani"
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        root = Path(tmp)
        data = subset(source, root / "data", per_class) if per_class else source
        pre, pre_md, pre_s = compare(data, PRETRAINED, "pretrained", root / "pretrained")
        rnd, rnd_md, rnd_s = compare(data, RANDOM, "random", root / "random")
    setup = pre["setup"]
    missing = [r["backbone"] for r in pre["backbones"] if "error" in r]
    body = (
        f"`sslall compare` in head mode (frozen backbone, multi-scale pooled features, an "
        f"ensemble of {setup['head_ensemble']} MLP heads {setup['head_hidden']}, at most "
        f"{setup['epochs']} epochs with early stopping on the validation split) on "
        f"all-taleqani{f', {per_class} images per class (seeded)' if per_class else ''}: "
        f"{setup['images']} distinct images ({setup['duplicates_dropped']} byte-identical "
        f"duplicates dropped first), split once (seed {setup['seed']}) into {setup['train']} "
        f"train / {setup['validation']} validation / {setup['test']} test; every backbone at "
        f"its own input size. Metrics are on the test split, which chooses nothing; per-class "
        f"F1 in the order {', '.join(setup['classes'])}. Throughputs are wall-clock images/s "
        f"on this machine: training = train + validation images through feature extraction "
        f"(a fresh cache) and the heads; inference = test images through backbone + head, "
        f"decoding included.\n\n"
        f"**Pretrained weights** ({pre_s:.0f} s):\n\n{pre_md}\n"
        f"**Random weights** (the same frozen architectures, randomly initialised: what the "
        f"features are worth without ImageNet; {rnd_s:.0f} s):\n\n{rnd_md}"
    )
    notes = [f"Not run for lack of offline weights (no network here; `SSLALL_OFFLINE=1` makes "
             f"each fail in one line instead of a 3 s probe): {', '.join(missing)}. "
             "With a weights file (`weights = \"file.safetensors\"`) or a Hugging Face cache "
             "they run like tf_efficientnet_lite0."] if missing else []
    collapsed = [r["backbone"] for r in rnd["backbones"] if "error" not in r
                 and r["macro_f1"] < 0.3]
    if collapsed:
        notes.append(f"Random-weight features of {', '.join(collapsed)} carry next to nothing "
                     "(the heads end up predicting about one class): a deep stack of randomly "
                     "initialised blocks washes the input out; ResNet's identity shortcuts and "
                     "the shallow baseline-cnn keep some of it.")
    notes.append("The machine was shared while this ran (see the load average below): absolute "
                 "images/s are low and noisy; compare backbones within one table, measured "
                 "back to back.")
    write_section("compare", "Backbones compared: `sslall compare` on all-taleqani", body,
                  quick=args.quick, notes=notes)
    emit({"pretrained": pre, "random": rnd, "seconds": {"pretrained": pre_s, "random": rnd_s}})


if __name__ == "__main__":
    main()
