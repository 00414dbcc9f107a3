"""`sslall predict` on one image, against the bare cost of importing torch and loading the model.

Target: `sslall predict IMG` answers within 3x the bare time to `import torch` and load the
round's checkpoint.

A workspace with one round of the default backbone (tf_efficientnet_lite0, 128 px) is built by
`sslall demo --rounds 1` (or `--workspace WS` reuses one with a finished round). Then, each in a
fresh process, interleaved (a, b, a, b, ...), N times each after one warm-up of both (page cache
warm):

  (a) bare: `import torch`, then what `load_checkpoint` does with the files: read model.json,
      `safetensors.torch.load_file` the weights and hash them (sha256);
  (b) `sslall predict -w WS IMG --json`, end to end (console script).

The ratio is median(b) / median(a), and also the median of the per-pair ratios (a machine
shared with other jobs slows both sides of a pair alike). One more run of (b) under
`python -X importtime` says where the import time goes, and which of the heavy optional
packages (scikit-learn, scipy, pandas, matplotlib, cleanlab, the Label Studio SDK) were loaded.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

TARGET_RATIO = 3.0
MUST_NOT_LOAD = ("sklearn", "scipy", "pandas", "matplotlib", "cleanlab", "label_studio_sdk")
BREAKDOWN = ("torch", "torchvision", "torch._dynamo", "timm", "faiss", "safetensors",
             "sslall.cli", "sslall.model._inference")

BARE = """
import hashlib, json, sys
import torch
from safetensors.torch import load_file
run = sys.argv[1]
json.loads(open(run + "/model.json", encoding="utf-8").read())
load_file(run + "/model.safetensors", device="cpu")
hashlib.sha256(open(run + "/model.safetensors", "rb").read()).hexdigest()
"""


def build_workspace(root: Path) -> Path:
    """A demo workspace with one finished round of the default backbone; its path."""
    subprocess.run([*_report.sslall_exe(), "--quiet", "demo", str(root / "demo"), "--rounds", "1",
                    "--per-class", "45", "--fresh"], check=True, stdout=subprocess.DEVNULL)
    return root / "demo" / "workspace"


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall seconds of one run of `cmd` in a fresh process (it must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env)
    return time.perf_counter() - t0


def import_breakdown(predict: list[str]) -> tuple[dict[str, float], list[str]]:
    """(cumulative import seconds of the BREAKDOWN modules, the MUST_NOT_LOAD ones imported) in
    one `predict` run under `python -X importtime`."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sslall", *predict[1:]],
                          capture_output=True, text=True, check=True)
    cumulative: dict[str, float] = {}
    loaded = set()
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)$", line)
        if not m:
            continue
        name = m.group(3)
        loaded.add(name.split(".")[0])
        if name in BREAKDOWN and name not in cumulative:
            cumulative[name] = int(m.group(1)) / 1e6
    return cumulative, [m for m in MUST_NOT_LOAD if m in loaded]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke size: 2 repeats")
    ap.add_argument("--workspace", type=Path, help="use this workspace (a finished round)")
    ap.add_argument("--image", type=Path, help="the image (default: the demo's first cell)")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    args = ap.parse_args()
    repeat = 2 if args.quick else args.repeat
    with _report.work_folder(args.keep, "predict-one") as root:
        ws = args.workspace or build_workspace(root)
        run = sorted((ws / "runs").glob("round-*"))[-1]
        image = args.image or sorted((ws.parent / "cells").rglob("*.png"))[0]
        bare = [sys.executable, "-c", BARE, str(run)]
        predict = [*_report.sslall_exe(), "predict", "-w", str(ws), str(image), "--json"]
        env = {**os.environ, "SSLALL_WORKSPACE": ""}
        timed(bare), timed(predict, env)  # warm-up: page cache
        a_s, b_s = [], []
        for _ in range(repeat):
            a_s.append(timed(bare))
            b_s.append(timed(predict, env))
        breakdown, heavy = import_breakdown(predict)
        weights_mib = (run / "model.safetensors").stat().st_size / 2**20
    ratio = _report.median(b_s) / _report.median(a_s)
    pair_ratio = _report.median([b / a for a, b in zip(a_s, b_s, strict=True)])
    results = {"bare_s": a_s, "predict_s": b_s, "ratio": ratio, "pair_ratio": pair_ratio,
               "imports_s": breakdown, "heavy_loaded": heavy, "machine": _report.machine()}
    _report.emit(results)
    rows = [("(a) import torch + load the checkpoint", *_stats(a_s)),
            ("(b) `sslall predict IMG --json`", *_stats(b_s))]
    body = "\n\n".join([
        f"Target: `sslall predict` on one image within {TARGET_RATIO:g}x the bare time to import "
        f"torch and load the checkpoint: {_report.verdict(max(ratio, pair_ratio) <= TARGET_RATIO)} "
        f"(median ratio {ratio:.2f}; median of the {repeat} interleaved pairs' ratios "
        f"{pair_ratio:.2f}).",
        f"Checkpoint: a `sslall demo --rounds 1` round of tf_efficientnet_lite0 at 128 px "
        f"({weights_mib:.1f} MiB of weights). Each "
        f"command a fresh process, interleaved a, b, a, b, {repeat} times each after one "
        "warm-up of both:",
        _report.table(["command", "median s", "min s", "max s"], rows),
        "Where `predict`'s imports go (one run under `python -X importtime`, cumulative "
        "seconds; nested, so they do not add up): "
        + ", ".join(f"`{k}` {v:.2f}" for k, v in breakdown.items()) + ". timm imports "
        "torchvision, whose `ops` import `torch._dynamo`: a timm backbone cannot be built "
        "without them. Not imported on the predict path: "
        + (", ".join(m for m in MUST_NOT_LOAD if m not in heavy) or "none")
        + (f"; imported: {', '.join(heavy)}" if heavy else "") + ".",
    ])
    _report.write_section("predict-one", "`sslall predict` on one image", body, quick=args.quick,
                          notes=["(a) is `import torch`, read model.json, "
                                 "`safetensors.torch.load_file` and sha256 of the weights: what "
                                 "`load_checkpoint` does with the files, without building the "
                                 "network.",
                                 "The machine is shared: both sides ran under the same load; "
                                 "compare ratios, not absolute times."])


def _stats(xs: list[float]) -> tuple[float, float, float]:
    return _report.median(xs), min(xs), max(xs)


if __name__ == "__main__":
    main()
