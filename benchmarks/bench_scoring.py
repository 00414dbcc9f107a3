"""Head-mode scoring throughput against the bare forward pass, cache hits, and peak RSS.

Targets:
(a) `extract_features` with an empty `FeatureCache` (decode + transform + forward + cache
    write) reaches >= 90 % of the bare forward-pass throughput of the same backbone and batch
    size (bare = `backbone.features(x)`, the forward `extract_features` runs, on a pre-built
    batch under `torch.inference_mode`; multi-scale pooling at the config's `feature_scales`):
    tf_efficientnet_lite0 (offline ImageNet weights) at 224 px on all-taleqani images, batch 32,
    torch's default thread count, for each DataLoader num_workers in `--workers`. One process,
    `--reps` repetitions in alternating order (bare, nw0, nw1, then nw1, nw0, bare, ...); the
    figure is the ratio of the fastest passes (interference only adds time), and the median
    of the per-repetition ratios is reported beside it.
(b) a second extract on the same ids (every feature a cache hit) takes >= 10x less time than
    the first: with the same `FeatureCache` object, and with a new one on the same folder.
(c) peak RSS while scoring 10k images stays under 2 GiB: pbc-128 images, `extract_features` in a
    subprocess whose process tree (VmHWM, PSS) is sampled, for each IMAGESxSIZExWORKERS in `--rss`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sslall.model._backbones import Backbone
    from sslall.model._feature_cache import FeatureCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from _proc import TreeSampler, status_kib  # noqa: E402

BACKBONE = "tf_efficientnet_lite0"
TARGET_RATIO = 0.90
TARGET_CACHE_SPEEDUP = 10.0
TARGET_RSS = 2 * 2**30


# -- (a) and (b) ---------------------------------------------------------------------------


def load_backbone() -> Backbone:
    """The default backbone as a round builds it (the config's default `feature_scales`)."""
    from sslall.config import ModelConfig
    from sslall.model._backbones import create_backbone

    return create_backbone(BACKBONE, pretrained=True, scales=ModelConfig().feature_scales)


def bare_pass(backbone: Backbone, x: torch.Tensor, batches: int) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(batches):
            backbone.features(x)
    return time.perf_counter() - t0


def pipeline_pass(backbone: Backbone, samples: list[tuple[str, str]], size: int, batch: int,
                  workers: int, cache_dir: Path, cache: FeatureCache | None = None
                  ) -> tuple[float, FeatureCache]:
    from sslall.model._feature_cache import FeatureCache
    from sslall.model._features import extract_features

    cache = cache if cache is not None else FeatureCache(cache_dir)
    t0 = time.perf_counter()
    feats = extract_features(backbone, samples, image_size=size, cache=cache, batch_size=batch,
                             num_workers=workers)
    elapsed = time.perf_counter() - t0
    assert feats.shape == (len(samples), backbone.num_features)
    return elapsed, cache


def components(backbone: Backbone, samples: list[tuple[str, str]], size: int, batch: int) -> dict:
    """Serial per-image costs in the main process: decode, transform, collate, cache write."""
    import numpy as np
    import torch

    from sslall.data._datasets import eval_transform
    from sslall.data._images import load_rgb
    from sslall.model._feature_cache import FeatureCache

    transform = eval_transform(size, backbone.mean, backbone.std)
    for _, path in samples[:8]:  # warm-up: first calls of each op
        transform(load_rgb(path, max_pixels=50_000_000))
    t_dec = t_tf = 0.0
    tensors, images = [], []
    for _, path in samples:
        t0 = time.perf_counter()
        im = load_rgb(path, max_pixels=50_000_000)
        t1 = time.perf_counter()
        tensors.append(transform(im))
        t_tf += time.perf_counter() - t1
        t_dec += t1 - t0
        images.append(im)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, which torch runs single-threaded
    t0 = time.perf_counter()
    for im in images:
        transform(im)
    t_tf1 = time.perf_counter() - t0
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for start in range(0, len(tensors), batch):
        torch.stack(tensors[start:start + batch])
    t_col = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="sslall-bench-put-", dir="/tmp"))
    try:
        fs = FeatureCache(tmp).open("x", "y", "z")
        feats = np.random.default_rng(0).standard_normal((len(samples), backbone.num_features),
                                                          dtype=np.float32)
        t0 = time.perf_counter()
        fs.put([s for s, _ in samples], feats)
        t_put = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(samples)
    return {"decode_ms": 1e3 * t_dec / n, "transform_ms": 1e3 * t_tf / n, "transform_1t_ms": 1e3 * t_tf1 / n,
            "collate_ms": 1e3 * t_col / n, "cache_put_ms": 1e3 * t_put / n}


def run_ratio(args: argparse.Namespace, tmp: Path) -> dict:
    """(a) and (b): `reps` rounds of bare / pipeline passes, ABC then CBA, in one process."""
    import torch

    from sslall.data._datasets import eval_transform
    from sslall.data._images import load_rgb
    paths = _report.pick_images(_report.data_root() / "all-taleqani", args.images)
    n = len(paths) - len(paths) % args.batch
    samples = _report.samples_of(paths[:n])  # reads every file once: the page cache is warm after
    backbone = load_backbone()
    backbone.module.eval()
    transform = eval_transform(args.size, backbone.mean, backbone.std)
    x = torch.stack([transform(load_rgb(p, max_pixels=50_000_000)) for _, p in samples[:args.batch]])
    with torch.inference_mode():  # warm-up: oneDNN primitive creation, allocator
        backbone.features(x)
        backbone.features(x)
    kinds = ["bare", *(f"nw{w}" for w in args.workers)]
    reps: list[dict[str, float]] = []
    loads: list[dict[str, float]] = []
    cache_hit: dict[str, float] = {}
    for rep in range(args.reps):
        times: dict[str, float] = {}
        load: dict[str, float] = {}
        for what in kinds if rep % 2 == 0 else kinds[::-1]:
            if what == "bare":
                times[what] = bare_pass(backbone, x, n // args.batch)
            else:
                folder = tmp / f"cache-{rep}-{what}"
                times[what], cache = pipeline_pass(backbone, samples, args.size, args.batch,
                                                   int(what[2:]), folder)
                if not cache_hit and what == "nw0":  # (b): the same ids again, all cache hits
                    cache_hit["first_s"] = times[what]
                    cache_hit["same_cache_s"] = pipeline_pass(
                        backbone, samples, args.size, args.batch, 0, folder, cache=cache)[0]
                    cache_hit["new_cache_object_s"] = pipeline_pass(
                        backbone, samples, args.size, args.batch, 0, folder)[0]
            load[what] = os.getloadavg()[0]
            print(f"  rep {rep + 1}/{args.reps} {what}: {times[what]:.1f} s", file=sys.stderr)
        reps.append(times)
        loads.append(load)
    out = {
        "images": n, "batch": args.batch, "size": args.size, "torch_threads": torch.get_num_threads(),
        "scales": backbone.scales, "dim": backbone.num_features, "kinds": kinds, "reps": reps,
        "load1": loads, "cache_hit": cache_hit,
        "comp": components(backbone, samples, args.size, args.batch),
        "bare_img_per_s": n * len(reps) / sum(t["bare"] for t in reps),
    }
    for what in kinds[1:]:
        ratios = [t["bare"] / t[what] for t in reps]
        out[f"{what}_ratios"] = ratios
        out[f"{what}_ratio"] = _report.median(ratios)
        out[f"{what}_best_ratio"] = min(t["bare"] for t in reps) / min(t[what] for t in reps)
        out[f"{what}_met"] = min(out[f"{what}_ratio"], out[f"{what}_best_ratio"]) >= TARGET_RATIO
        out[f"{what}_img_per_s"] = n * len(reps) / sum(t[what] for t in reps)
    if cache_hit:
        out["cache_speedup_same"] = cache_hit["first_s"] / cache_hit["same_cache_s"]
        out["cache_speedup_new"] = cache_hit["first_s"] / cache_hit["new_cache_object_s"]
    if args.profile or not all(out[f"{w}_met"] for w in kinds[1:]):
        out["profile"] = profile_pipeline(backbone, samples, args, tmp / "cache-profile")
    return out


def profile_pipeline(backbone: Backbone, samples: list[tuple[str, str]], args: argparse.Namespace,
                     cache_dir: Path) -> str:
    prof = cProfile.Profile()
    prof.enable()
    pipeline_pass(backbone, samples, args.size, args.batch, 0, cache_dir)
    prof.disable()
    return _report.profile_text(prof, "cumulative", 25)


# -- (c) ----------------------------------------------------------------------------------


def rss_child(spec: str, cache_dir: str, batch: int) -> None:
    """In the subprocess: extract features of N pbc-128 images (spec NxSIZExWORKERS), empty cache."""
    from sslall.model._feature_cache import FeatureCache
    from sslall.model._features import extract_features

    n, size, workers = (int(v) for v in spec.split("x"))
    paths = _report.pick_images(_report.data_root() / "pbc-128", n)
    samples = _report.samples_of(paths)
    backbone = load_backbone()
    before = status_kib(os.getpid())[0] * 1024
    t0 = time.perf_counter()
    feats = extract_features(backbone, samples, image_size=size, cache=FeatureCache(cache_dir),
                             batch_size=batch, num_workers=workers)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"images": len(samples), "extract_s": elapsed, "rss_before_extract": before,
                      "vmhwm_at_end": status_kib(os.getpid())[1] * 1024, "img_per_s": len(samples) / elapsed,
                      "shape": list(feats.shape)}))


def run_rss(spec: str, batch: int, tmp: Path) -> dict:
    """(c): one child process scoring per spec, its process tree sampled every 0.2 s."""
    cache = tmp / f"rss-cache-{spec}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", spec, "--batch", str(batch),
           "--cache-dir", str(cache)]
    out_path, err_path = tmp / f"rss-{spec}.out", tmp / f"rss-{spec}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid, interval=0.2).start()
        code = proc.wait()
        sampler.stop()
    if code != 0:
        raise SystemExit(f"RSS child {spec} failed ({code}): {err_path.read_text()[-2000:]}")
    child = json.loads(out_path.read_text().strip().splitlines()[-1])
    _, size, workers = (int(v) for v in spec.split("x"))
    timeline = []  # the main process's RSS at quarter points of its life
    for q in (0.25, 0.5, 0.75, 1.0):
        s = next((x for x in sampler.samples if x.t >= q * sampler.samples[-1].t), None)
        if s is not None:
            timeline.append(_report.mib(s.main_rss))
    return {**child, "spec": spec, "size": size, "workers": workers,
            "peak_main": max(sampler.peak_main_hwm, child["vmhwm_at_end"]),
            "peak_worker": sampler.peak_child_hwm, "peak_tree_pss": sampler.peak_tree_pss,
            "peak_tree_rss_sum": sampler.peak_tree_rss, "timeline_mib": timeline,
            "cache_mib": _report.mib(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()))}


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=None, help="all-taleqani images for (a)/(b) [192]")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions for (a) [7]")
    ap.add_argument("--workers", default="0,1", help="DataLoader num_workers settings for (a)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (the config's train.batch_size)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rss", default=None, help="(c) runs, IMAGESxSIZExNUM_WORKERS, comma-separated "
                    "('' to skip) [10000x128x0,2000x128x1,1000x224x0]")
    ap.add_argument("--profile", action="store_true", help="profile the pipeline even if on target")
    ap.add_argument("--quick", action="store_true", help="smoke-size defaults: 64 images, 1 rep, 500 for (c)")
    ap.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.cache_dir, args.batch)
        return
    args.workers = sorted({0, *(int(w) for w in args.workers.split(","))})
    for key, full, quick in (("images", 192, 64), ("reps", 7, 1),
                             ("rss", "10000x128x0,2000x128x1,1000x224x0", "500x128x0,500x128x1")):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)

    tmp = Path(tempfile.mkdtemp(prefix="sslall-bench-scoring-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        ratio = run_ratio(args, tmp)
        from sslall.config import TrainConfig

        rss = [run_rss(spec, args.batch, tmp) for spec in args.rss.split(",") if spec]
        results = {"bench": "scoring", "wall_s": time.perf_counter() - t0,
                   **{k: v for k, v in ratio.items() if k != "profile"}, "rss": rss,
                   "target_a_met_with": [int(k[2:]) for k in ratio["kinds"][1:] if ratio[f"{k}_met"]],
                   "default_num_workers": TrainConfig().num_workers,
                   "target_b_met": min(ratio["cache_speedup_new"], ratio["cache_speedup_same"])
                   >= TARGET_CACHE_SPEEDUP,
                   "target_c_met": all(_rss_ok(r) for r in rss) if rss else None}
        _report.emit(results)
        _write(results, ratio.get("profile"), args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rss_ok(r: dict) -> bool:
    return max(r["peak_main"], r["peak_worker"], r["peak_tree_pss"]) < TARGET_RSS


def _write(r: dict, profile: str | None, args: argparse.Namespace) -> None:
    n, kinds, reps = r["images"], r["kinds"], r["reps"]
    label = {"bare": "bare forward", **{k: f"pipeline, num_workers={k[2:]}" for k in kinds[1:]}}
    rows = [[f"rep {i + 1} ({' -> '.join(kinds if i % 2 == 0 else kinds[::-1])})",
             *[f"{t[k]:.1f} s ({r['load1'][i][k]:.1f})" for k in kinds],
             *[f"{t['bare'] / t[k]:.3f}" for k in kinds[1:]]] for i, t in enumerate(reps)]
    rows.append(["**images/s (all reps) / median ratio**", f"{r['bare_img_per_s']:.1f}",
                 *[f"{r[k + '_img_per_s']:.1f}" for k in kinds[1:]],
                 *[f"{r[k + '_ratio']:.3f}" for k in kinds[1:]]])
    rows.append(["**fastest pass / ratio of the fastest passes**",
                 *[f"{min(t[k] for t in reps):.1f} s" for k in kinds],
                 *[f"**{r[k + '_best_ratio']:.3f}**" for k in kinds[1:]]])
    a_t = _report.table(["", *[f"{label[k]} (load)" for k in kinds],
                         *[f"ratio nw={k[2:]}" for k in kinds[1:]]], rows)
    c = r["comp"]
    comp_t = _report.table(
        ["per image, serial in the main process", "ms"],
        [["decode (`load_rgb`: open, full decode, RGB)", f"{c['decode_ms']:.2f}"],
         ["eval transform (ToImage, Resize antialias, ToDtype, CenterCrop, Normalize), torch "
          f"threads = {r['torch_threads']}", f"{c['transform_ms']:.2f}"],
         ["the same transform, torch threads = 1 (as in a DataLoader worker)",
          f"{c['transform_1t_ms']:.2f}"],
         ["collate (`torch.stack` of a batch)", f"{c['collate_ms']:.3f}"],
         ["cache write (`FeatureSet.put`, float16 shard + fsync)", f"{c['cache_put_ms']:.3f}"],
         ["bare forward (for comparison)", f"{1e3 / r['bare_img_per_s']:.1f}"]],
    )
    ch = r["cache_hit"]
    b_t = _report.table(
        ["extract of the same ids", "seconds", "first / this"],
        [["first (empty cache, num_workers=0)", f"{ch['first_s']:.2f}", "1"],
         ["again, same `FeatureCache` object", f"{ch['same_cache_s']:.4f}",
          f"**{r['cache_speedup_same']:,.0f}x**"],
         ["again, new `FeatureCache` on the same folder (re-indexes shards)",
          f"{ch['new_cache_object_s']:.4f}", f"**{r['cache_speedup_new']:,.0f}x**"]],
    )
    per = "; ".join(f"num_workers={k[2:]}: {_report.verdict(r[k + '_met'])} (fastest passes "
                    f"{r[k + '_best_ratio']:.1%}, median paired ratio {r[k + '_ratio']:.1%})"
                    for k in kinds[1:])
    default = r["default_num_workers"]
    default_met = f"nw{default}" in kinds and r[f"nw{default}_met"]
    body = [
        f"**(a)** pipeline >= {TARGET_RATIO:.0%} of bare forward throughput: {per}. With the "
        f"config default `train.num_workers = {default}` the target is "
        f"{_report.verdict(default_met)}. {BACKBONE} (offline ImageNet weights), "
        f"{r['size']} px, batch {r['batch']}, {n} all-taleqani images (224x224 JPEG) a pass, torch "
        f"threads = {r['torch_threads']} (default). Pipeline = `extract_features` with an empty "
        "cache (decode, transform, forward, cache write); bare = `backbone.features(x)` (the same "
        f"forward: final features plus {r['scales']} pooled intermediate stages, D = {r['dim']}) on "
        f"one pre-built batch under `inference_mode`. {len(reps)} repetitions, the order "
        "alternating. A setting meets the target only if both "
        "estimates reach it: the ratio of the fastest passes (other jobs on this shared machine "
        "only ever add time, so the fastest pass is the least disturbed) and the median of the "
        "per-repetition ratios (each against the same repetition's bare pass). Seconds a pass, "
        "with the 1-minute load average after it:",
        "", a_t, "",
        "Where a pipeline image's time goes (serially, main process; with num_workers=0 this adds "
        "to the forward pass, with num_workers=1 it runs in a worker process, overlapped with the "
        "forward but competing with its threads for the 2 cores):", "", comp_t, "",
        f"With num_workers=0 the transform's small tensor ops run on torch's {r['torch_threads']} "
        f"intra-op threads: {c['transform_ms']:.2f} ms an image here against "
        f"{c['transform_1t_ms']:.2f} ms on one thread (as in a DataLoader worker). On a busy "
        "2-core machine a parallel op waits for whichever of its threads was descheduled, so the "
        "main-process data path can cost many times its single-threaded time"
        + (" (as it did here)." if c["transform_ms"] > 2 * c["transform_1t_ms"] else
           " (not while this table was measured)."), "",
        f"**(b)** second extract (all cache hits) >= {TARGET_CACHE_SPEEDUP:.0f}x faster: "
        f"{_report.verdict(r['target_b_met'])}. (The round-level figure is in the Rounds section.)",
        "", b_t, "",
    ]
    if r["rss"]:
        body += [
            f"**(c)** peak RSS while scoring < 2 GiB: {_report.verdict(bool(r['target_c_met']))}. "
            "`extract_features` of pbc-128 images (128x128 JPEG) with an empty cache, batch "
            f"{r['batch']}, in a fresh subprocess whose tree is sampled every 0.2 s (VmHWM, and "
            "PSS from smaps_rollup, which counts pages a forked worker shares with its parent "
            "once) and which reads its own VmHWM last thing (not wait4's ru_maxrss: Linux carries "
            "that across exec from the forked copy of the large parent). 128 px is "
            "pbc-128's native size; the 224 px row (the config default, upscaled) is shorter "
            "because the peak comes from one batch's activations, not from the number of images.",
            "",
            _report.table(
                ["images", "px", "num_workers", "peak RSS main (MiB)", "peak RSS worker (MiB)",
                 "peak PSS tree (MiB)", "RSS at 25/50/75/100 % (MiB)", "before 1st image (MiB)",
                 "images/s", "cache (MiB)"],
                [[f"{x['images']:,}", x["size"], x["workers"], f"{_report.mib(x['peak_main']):,.0f}",
                  f"{_report.mib(x['peak_worker']):,.0f}" if x["workers"] else "-",
                  f"{_report.mib(x['peak_tree_pss']):,.0f}",
                  " / ".join(f"{v:,.0f}" for v in x["timeline_mib"]),
                  f"{_report.mib(x['rss_before_extract']):,.0f}", f"{x['img_per_s']:.1f}",
                  f"{x['cache_mib']}"] for x in r["rss"]]),
            "",
            "'Before 1st image' is the process with torch, timm and the backbone loaded (this "
            "venv's torch is a CUDA build); most of the peak is there before scoring starts.",
        ]
    if profile:
        body += ["", "<details><summary>cProfile of one num_workers=0 pipeline pass (by cumulative "
                 "time)</summary>", "", "```", profile, "```", "</details>"]
    _report.write_section("scoring", "Scoring: head-mode feature extraction vs bare forward",
                          "\n".join(body), quick=args.quick)


if __name__ == "__main__":
    main()
