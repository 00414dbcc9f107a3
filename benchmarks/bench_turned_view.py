"""The turned view of last-stage mode (`augment.turned_view`), outside the loop, on pbc-128.

The last stage of tf_efficientnet_lite0 (224 px) trained on the starting labels that `sslall
simulate` draws (2 % by default, holdout for early stopping), three ways per training seed:
on the upright maps alone (`augment.turned_view = false`), on the upright and the turned maps
(each image turned 90 degrees before the frozen stages), and the latter scored as the round
scores it, the mean of both views' logits. Flips of the cached maps are on throughout.

`--split choose` trains and scores inside the training tree (a stratified 20 % of it as the
validation part, split seed 1: what settings are chosen on); `--split data` on the test split.
Both sets of maps are extracted once under --keep (`bench_last_stage.cached_maps`).

    python benchmarks/bench_turned_view.py --keep /tmp/bsim --split choose
    python benchmarks/bench_turned_view.py --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit, table, work_folder, write_section
from bench_last_stage import DEFAULTS, cached_maps, pbc_split
from bench_simulate import split

from sslall.config import Config
from sslall.decide._metrics import classification_metrics
from sslall.experiments._simulate import SimulationSpec, class_folders, initial_split
from sslall.model._backbones import create_backbone
from sslall.model._last_stage import split_last_stage, stage_embeddings, train_last_stage
from sslall.store._sources import list_source


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.02)
    ap.add_argument("--split", choices=("choose", "data"), default="choose")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    ap.add_argument("--quick", action="store_true", help="24 images per class, 3 epochs, one seed")
    ap.add_argument("--keep", type=Path, help="keep the split and the maps here")
    args = ap.parse_args()
    size, t = 224, DEFAULTS.train
    seeds = args.seeds[:1] if args.quick else args.seeds
    with work_folder(args.keep, "turned-view") as root:
        here, data = pbc_split(root, quick=args.quick)
        part = data if args.split == "data" else here / "choose"
        if not (part / "test").is_dir():
            split(data / "train", part, seed=1)
        classes = class_folders(data / "train")
        entries = list_source(data / "train", "labeled", classes) + list_source(
            data / "test", "labeled", classes)
        index = {str(Path(e.path).resolve()): i for i, e in enumerate(entries)}

        def rows(found) -> np.ndarray:
            return np.sort([index[str(Path(e.path).resolve())] for e in found])

        spec = SimulationSpec(part / "train", part / "test", here, Config(classes=classes), 1,
                              label_fraction=args.fraction, seed=0)
        labeled, holdout, _ = initial_split(list_source(part / "train", "labeled", classes), spec)
        start, held = rows(labeled), rows(holdout)
        test = rows(list_source(part / "test", "labeled", classes))
        y = np.array([classes.index(e.label) for e in entries])
        backbone = create_backbone("tf_efficientnet_lite0", pretrained=True, scales=0)
        pristine = {k: v.clone() for k, v in backbone.module.state_dict().items()}
        stage = split_last_stage(backbone.module)
        paths = [e.path for e in entries]
        views = {}
        for name, turned in (("upright", False), ("turned", True)):
            started = time.perf_counter()
            views[name] = cached_maps(stage, paths, size, backbone.mean, backbone.std,
                                      here / f"maps-{size}-cut6{'-turned' if turned else ''}.npy",
                                      turned=turned)
            print(name, "maps ready in", round(time.perf_counter() - started), "s", flush=True)

        def f32(name: str, at: np.ndarray) -> np.ndarray:
            return np.asarray(views[name][at], dtype=np.float32)

        def logits(head, name: str) -> np.ndarray:
            emb = stage_embeddings(stage, views[name], torch.device("cpu"), rows=test)
            with torch.inference_mode():
                return head.eval()(torch.from_numpy(emb)).numpy()

        def f1(logits: np.ndarray) -> float:
            return classification_metrics(y[test], logits.argmax(1), None, list(classes))["macro_f1"]

        results = []
        for seed in seeds:
            for trainer, names in (("upright maps", ["upright"]), ("both views", ["upright", "turned"])):
                backbone.module.load_state_dict(pristine)  # every run starts from ImageNet
                x = np.concatenate([f32(n, start) for n in names])
                head, result = train_last_stage(
                    stage, x, np.tile(y[start], len(names)), np.ones(len(x), np.float32),
                    f32("upright", held), y[held], num_classes=len(classes), hidden=t.head_hidden,
                    dropout=t.dropout, lr=t.lr, weight_decay=t.weight_decay,
                    epochs=3 if args.quick else t.epochs, batch_size=t.batch_size,
                    class_balance=t.class_balance, patience=t.patience, seed=seed,
                    device=torch.device("cpu"), hflip=True, vflip=True,
                    max_epoch_rows=t.stage_epoch_rows)
                upright = logits(head, "upright")
                results.append({"trainer": trainer, "seed": seed, "macro_f1": f1(upright),
                                "mean_of_views": f1((upright + logits(head, "turned")) / 2),
                                "train_seconds": round(result.seconds, 1)})
                print(results[-1], flush=True)
    body_rows = []
    for trainer, scored in (("upright maps", "macro_f1"), ("both views", "macro_f1"),
                            ("both views, mean of the views' logits", "mean_of_views")):
        got = [r[scored] for r in results if r["trainer"] == trainer.split(",")[0]]
        sd = f" +- {np.std(got, ddof=1):.3f}" if len(got) > 1 else ""
        body_rows.append([trainer, f"{np.mean(got):.3f}{sd}", " / ".join(f"{v:.3f}" for v in got)])
    body = "\n".join([
        f"tf_efficientnet_lite0 at {size} px, last stage + head trained on the {args.fraction:.0%} "
        f"starting labels of `sslall simulate` (seed 0; {len(start)} labels + {len(held)} holdout) "
        f"of the `{args.split}` split ({len(test):,} scored cells), round defaults, flips of the "
        "maps on. Training seeds as listed.", "",
        table(["trained on", "macro-F1 (mean +- sd)", "per seed"], body_rows), ""])
    write_section(f"turned-view-{args.split}", "pbc-128: the turned view of last-stage mode "
                  f"(`{args.split}` split)", body, quick=args.quick)
    emit({"benchmark": "turned-view", "split": args.split, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
