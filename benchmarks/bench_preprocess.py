"""Preprocessing compared on all-taleqani: `[preprocess]` variants under `sslall compare` (issue 7).

For each variant (none, Reinhard, Macenko, CLAHE, HSV cell masking) a fresh workspace gets that
`[preprocess]` section and `sslall compare --backbones tf_efficientnet_lite0 --mode head` runs on
the same seeded subset, split and seed (the real CLI in a subprocess), so the features are
extracted from the preprocessed images. The cost of each step is timed on its own too
(milliseconds per 224 px field, in this process). Also draws the README's before/after
pictures from a synthetic cell (docs/preprocess-*.png).

    python benchmarks/bench_preprocess.py                  # 200 images per class
    python benchmarks/bench_preprocess.py --per-class 0    # every image
    python benchmarks/bench_preprocess.py --quick          # 24 images per class
    python benchmarks/bench_preprocess.py --pictures-only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import REPO, data_root, emit, pick_images, sslall_exe, table, write_section
from bench_compare import compare, subset
from PIL import Image

# name -> the [preprocess] keys it sets (hue window: the stained cells of all-taleqani have
# hues of about 215-280 degrees where their saturation passes 0.3)
VARIANTS: dict[str, dict[str, object]] = {
    "none": {},
    "reinhard": {"stain_norm": "reinhard"},
    "macenko": {"stain_norm": "macenko"},
    "clahe": {"clahe": True},
    "mask": {"mask": True, "mask_saturation": 0.25, "mask_hue_low": 200.0,
             "mask_hue_high": 300.0},
}
DOCS = REPO / "docs"


def pictures() -> list[Path]:
    """docs/preprocess-<step>.png: a synthetic cell under an off stain, before | after."""
    from sslall.data import _preprocess as pre
    from sslall.data._synthetic import render_cell

    cell = np.asarray(render_cell(1, 3, np.random.default_rng(7), size=160), dtype=np.uint8)
    od = -np.log((cell.astype(np.float64) + 1) / 256)  # a darker, bluer staining of it
    off = np.clip(256 * np.exp(-od * np.array([1.5, 1.1, 0.8])) - 1, 0, 255).astype(np.uint8)
    washed = (cell.astype(float) * 0.45 + 135).astype(np.uint8)  # a washed-out field
    steps = {"reinhard": (off, pre.reinhard(off)), "macenko": (off, pre.macenko(off)),
             "clahe": (washed, pre.clahe(washed, clip=2.0, tiles=8)),
             "mask": (cell, pre.mask_cells(cell, saturation=0.25, hue=(200.0, 300.0)))}
    DOCS.mkdir(exist_ok=True)
    written = []
    for name, (before, after) in steps.items():
        gap = np.full((before.shape[0], 6, 3), 255, np.uint8)
        path = DOCS / f"preprocess-{name}.png"
        Image.fromarray(np.hstack([before, gap, after])).save(path, optimize=True)
        written.append(path)
    return written


def step_cost(files: list[Path]) -> dict[str, float]:
    """Milliseconds per image of each variant's preprocessing alone (decoded images in memory)."""
    from sslall.config import PreprocessConfig
    from sslall.data._preprocess import make_preprocessor

    images = [Image.open(f).convert("RGB") for f in files]
    out = {}
    for name, keys in VARIANTS.items():
        fn = make_preprocessor(PreprocessConfig(**keys))
        if fn is None:
            continue
        started = time.perf_counter()
        for image in images:
            fn(image)
        out[name] = 1000 * (time.perf_counter() - started) / len(images)
    return out


def workspace(root: Path, name: str, keys: dict[str, object]) -> Path:
    """A workspace whose sslall.toml carries this variant's [preprocess] keys."""
    ws = root / f"ws-{name}"
    subprocess.run([*sslall_exe(), "-q", "init", str(ws), "--classes", "Benign,Early,Pre,Pro"],
                   check=True)
    text = (ws / "sslall.toml").read_text()
    for key, value in keys.items():
        literal = ("true" if value else "false") if isinstance(value, bool) else (
            f'"{value}"' if isinstance(value, str) else repr(value))
        text, n = _set(text, key, literal)
        assert n == 1, key
    (ws / "sslall.toml").write_text(text)
    return ws


def _set(text: str, key: str, literal: str) -> tuple[str, int]:
    import re

    section = text.split("[preprocess]", 1)
    new, n = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {literal}  ", section[1], count=1)
    return section[0] + "[preprocess]" + new, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200, help="images per class (0 = all)")
    parser.add_argument("--quick", action="store_true", help="24 images per class")
    parser.add_argument("--pictures-only", action="store_true")
    args = parser.parse_args()
    drawn = pictures()
    if args.pictures_only:
        emit({"pictures": [str(p.relative_to(REPO)) for p in drawn]})
        return
    per_class = 24 if args.quick else args.per_class
    source = data_root() / "all-taleqani"
    cost = step_cost(pick_images(source, 100))
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        root = Path(tmp)
        data = subset(source, root / "data", per_class) if per_class else source
        for name, keys in VARIANTS.items():
            ws = workspace(root, name, keys)
            got, _, seconds = compare(data, "tf_efficientnet_lite0", "pretrained",
                                      root / f"out-{name}", ["-w", str(ws)])
            r = got["backbones"][0]
            results[name] = {**r, "wall_seconds": seconds, "setup": got["setup"]}
            rows.append([name, ", ".join(f"{k}={v}" for k, v in keys.items()) or "-",
                         f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}",
                         " / ".join(f"{v:.3f}" for v in r["per_class_f1"].values()),
                         f"{r['ece']:.3f}", f"{cost.get(name, 0.0):.1f}",
                         f"{r['train_images_per_s']:.1f}"])
    setup = results["none"]["setup"]
    body = (
        "Each `[preprocess]` variant in its own workspace, then `sslall compare --backbones "
        "tf_efficientnet_lite0 --mode head --weights pretrained` on the same "
        f"{'seeded subset of ' + str(per_class) + ' images per class of ' if per_class else ''}"
        f"all-taleqani ({setup['images']} distinct images; {setup['train']} train / "
        f"{setup['validation']} validation / {setup['test']} test, seed {setup['seed']}): the "
        "features are extracted from the preprocessed images and cached under a key that names "
        "the preprocessing. Metrics on the test split; per-class F1 in the order "
        f"{', '.join(setup['classes'])}. `ms/image` is the preprocessing alone on 100 decoded "
        "224 px fields; `train img/s` is the whole head-mode training (extraction included).\n\n"
        + table(["variant", "keys", "accuracy", "macro-F1", "per-class F1", "ECE", "ms/image",
                 "train img/s"], rows)
    )
    notes = ["One split and one seed: differences of a few test images are within noise "
             f"(one test image is {100 / setup['test']:.1f} % of accuracy).",
             "Before/after pictures of each step (synthetic cell) are in README.md "
             "(docs/preprocess-*.png).",
             "`none` is the same subset, split and seed as tf_efficientnet_lite0 in \"Backbones "
             "compared\" (at the same per-class size), so its row reproduces that one.",
             "`train img/s` follows the machine's load more than the variant (the load fell "
             "during the run); `ms/image` is the cost of the step itself."]
    write_section("preprocess", "Preprocessing compared: `[preprocess]` on all-taleqani", body,
                  quick=args.quick, notes=notes)
    emit({"results": results, "ms_per_image": cost, "env": {"SSLALL_OFFLINE":
                                                          os.environ.get("SSLALL_OFFLINE")}})


if __name__ == "__main__":
    main()
