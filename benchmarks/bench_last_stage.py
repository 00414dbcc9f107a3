"""Last-stage training on cached maps, alone and with consistency training (issue 4, pbc-128).

What `model.mode = "last-stage"` trains, measured outside the loop on the starting split that
`sslall simulate` makes (`initial_split`: same fraction, seed and holdout share), so "same
labels" compares with the simulate baselines; "all labels" trains on every training image.
The maps (output of tf_efficientnet_lite0's blocks 0-5 at 224 px, float16) are extracted once
with `LastStage.frozen_maps` and kept in one .npy under --keep.

Three trainers, each for several training seeds on the same split:
- `last-stage`: `sslall.model._last_stage.train_last_stage` with the round's defaults;
- `+ consistency`: the same, plus a FixMatch-style loss on the unlabeled training maps (an
  experiment, not part of sslall): each step also draws unlabeled maps, predicts them
  unaugmented, and where the prediction's confidence is >= --tau trains the flipped,
  channel-dropped maps to that class (weight --lambda-u);
- `all labels`: `train_last_stage` on every training image (4 epochs).
The test split (bench_simulate's) only gives the reported figures; early stopping uses the holdout.

    python benchmarks/bench_last_stage.py --keep /tmp/bsim        # pbc, 224 px, seeds 0 1 2
    python benchmarks/bench_last_stage.py --quick                 # 24 images per class
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _report import data_root, emit, table, work_folder, write_section
from bench_simulate import split
from torch import nn

from sslall.config import Config
from sslall.data._datasets import ImageDataset, eval_transform, make_loader
from sslall.decide._metrics import classification_metrics
from sslall.experiments._simulate import SimulationSpec, class_folders, initial_split
from sslall.model._backbones import create_backbone, turn
from sslall.model._devices import seeded
from sslall.model._heads import MLPHead
from sslall.model._last_stage import (
    STAGE_LR_FACTOR,
    LastStage,
    flip_maps,
    split_last_stage,
    stage_embeddings,
    train_last_stage,
)
from sslall.model._train import param_groups
from sslall.store._sources import list_source

DEFAULTS = Config(classes=("a", "b"))  # the round's training defaults


def cached_maps(stage: LastStage, paths: list[str], size: int, mean, std, out: Path, *,
                turned: bool = False) -> np.ndarray:
    """[N, C*H*W] float16 maps of every path (`turned`: of each image turned 90 degrees),
    memory-mapped at `out` (computed when missing)."""
    stage.set_input_size(size)
    if out.exists():
        return np.load(out, mmap_mode="r").reshape(len(paths), -1)
    loader = make_loader(ImageDataset(paths, eval_transform(size, mean, std), max_pixels=50_000_000),
                         batch_size=64, num_workers=1)
    maps = np.lib.format.open_memmap(out.with_suffix(".part"), mode="w+", dtype=np.float16,
                                     shape=(len(paths), *stage.map_shape))
    stage.module.eval()
    with torch.inference_mode():
        for x, idx in loader:
            x = turn(x) if turned else x
            maps[idx.numpy()] = stage.frozen_maps(x).reshape(len(x), *stage.map_shape).numpy()
    maps.flush()
    out.with_suffix(".part").rename(out)
    return np.load(out, mmap_mode="r").reshape(len(paths), -1)


def pbc_split(root: Path, *, quick: bool) -> tuple[Path, Path]:
    """(the benchmark's folder under `root`, bench_simulate's pbc-128 split in it), split once."""
    here = root / ("pbc-quick" if quick else "pbc")
    data = here / "data"
    if not (data / "test").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        split(data_root() / "pbc-128", data, per_class=24 if quick else None)
    return here, data


def rows_of(maps: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.asarray(maps[np.sort(rows)], dtype=np.float32)


def last_stage(stage: LastStage, maps, y, rows, held, classes: int, *, seed: int, epochs: int):
    t = DEFAULTS.train
    rows, held = np.sort(rows), np.sort(held)
    head, result = train_last_stage(
        stage, rows_of(maps, rows), y[rows], np.ones(len(rows)), rows_of(maps, held), y[held],
        num_classes=classes, hidden=t.head_hidden, dropout=t.dropout, lr=t.lr,
        weight_decay=t.weight_decay, epochs=epochs, batch_size=t.batch_size,
        class_balance=t.class_balance, patience=t.patience, seed=seed, device=torch.device("cpu"),
        hflip=DEFAULTS.augment.hflip, vflip=DEFAULTS.augment.vflip)
    return head, {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                  "train_seconds": round(result.seconds, 1)}


def with_consistency(stage: LastStage, maps, y, rows, held, unlabeled, classes: int, *, width: int,
                     seed: int, epochs: int, tau: float, lambda_u: float, mu: int, drop: float):
    """FixMatch on maps: supervised loss on class-balanced labeled draws plus, per step, `mu`
    times as many unlabeled maps trained to their confident unaugmented prediction."""
    t = DEFAULTS.train
    rows, held = np.sort(rows), np.sort(held)
    x_l, y_l = torch.from_numpy(rows_of(maps, rows)), torch.from_numpy(y[rows])
    x_v, y_v = rows_of(maps, held), y[held]
    shape = stage.map_shape
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with seeded(seed, torch.device("cpu")):
        head = MLPHead(width, classes, hidden=t.head_hidden, dropout=t.dropout)
        model = nn.Sequential(stage, head)
        opt = torch.optim.AdamW([*param_groups(stage.trainable_parameters(), t.lr * STAGE_LR_FACTOR,
                                               t.weight_decay), *param_groups(head, t.lr, t.weight_decay)])
        gen = torch.Generator().manual_seed(seed)
        p = 1.0 / np.bincount(y_l.numpy(), minlength=classes)[y_l.numpy()]
        p /= p.sum()
        best, best_state, best_epoch, history, used = (-1.0, 0.0), None, 0, [], []
        for epoch in range(1, epochs + 1):
            model.train()
            order = rng.choice(len(x_l), size=max(len(x_l), 512), p=p)
            for lo in range(0, len(order), t.batch_size):
                b = order[lo:lo + t.batch_size]
                xb = flip_maps(x_l[b].reshape(len(b), *shape), gen, hflip=True, vflip=True)
                loss = F.cross_entropy(model(xb), y_l[b])
                u = np.sort(rng.choice(unlabeled, size=mu * len(b), replace=False))
                xu = torch.from_numpy(np.asarray(maps[u], dtype=np.float32)).reshape(len(u), *shape)
                with torch.no_grad():
                    model.eval()
                    probs = model(xu).softmax(1)
                    model.train()
                conf, target = probs.max(1)
                mask = conf >= tau
                used.append(float(mask.float().mean()))
                if mask.any():
                    strong = F.dropout(flip_maps(xu[mask], gen, hflip=True, vflip=True), drop)
                    unsupervised = F.cross_entropy(model(strong), target[mask]) * mask.float().mean()
                    loss = loss + lambda_u * unsupervised
                opt.zero_grad()
                loss.backward()
                opt.step()
            emb = stage_embeddings(stage, x_v, torch.device("cpu"))
            with torch.inference_mode():
                logits = head.eval()(torch.from_numpy(emb))
            f1 = classification_metrics(y_v, logits.argmax(1).numpy(), None,
                                        [str(c) for c in range(classes)])["macro_f1"]
            nll = float(F.cross_entropy(logits, torch.from_numpy(y_v)))
            history.append(f1)
            if (f1, -nll) > best:
                best, best_epoch = (f1, -nll), epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            if epoch - best_epoch >= t.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return head, {"best_epoch": best_epoch, "epochs_run": len(history),
                  "train_seconds": round(time.perf_counter() - started, 1),
                  "unlabeled_used": round(float(np.mean(used)), 3)}


def test_f1(stage: LastStage, head: nn.Module, maps, y, test, classes) -> float:
    emb = stage_embeddings(stage, maps, torch.device("cpu"), rows=test)
    with torch.inference_mode():
        probs = head.eval()(torch.from_numpy(emb)).softmax(1).numpy()
    return classification_metrics(y[test], probs.argmax(1), probs, list(classes))["macro_f1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.02)
    ap.add_argument("--split-seed", type=int, default=0, help="simulate's --seed for the start split")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    ap.add_argument("--tau", type=float, default=0.95)
    ap.add_argument("--lambda-u", type=float, default=1.0)
    ap.add_argument("--mu", type=int, default=2)
    ap.add_argument("--drop", type=float, default=0.2, help="dropout on the strong view's maps")
    ap.add_argument("--all-epochs", type=int, default=4, help="epochs with every label")
    ap.add_argument("--quick", action="store_true", help="24 images per class, 3 epochs, one seed")
    ap.add_argument("--keep", type=Path, help="reuse bench_simulate's split and keep the maps here")
    args = ap.parse_args()
    epochs = 3 if args.quick else DEFAULTS.train.epochs
    all_epochs = 2 if args.quick else args.all_epochs
    seeds = args.seeds[:1] if args.quick else args.seeds
    with work_folder(args.keep, "last-stage") as root:
        here, data = pbc_split(root, quick=args.quick)
        classes = class_folders(data / "train")
        train_entries = list_source(data / "train", "labeled", classes)
        test_entries = list_source(data / "test", "labeled", classes)
        spec = SimulationSpec(data / "train", data / "test", here, Config(classes=classes), 1,
                              label_fraction=args.fraction, seed=args.split_seed)
        labeled, holdout, _ = initial_split(train_entries, spec)
        entries = train_entries + test_entries
        index = {e.path: i for i, e in enumerate(entries)}
        y = np.array([classes.index(e.label) for e in entries])
        backbone = create_backbone("tf_efficientnet_lite0", pretrained=True, scales=0)
        pristine = {k: v.clone() for k, v in backbone.module.state_dict().items()}
        stage = split_last_stage(backbone.module)
        cache = here / f"maps-{args.image_size}-cut6.npy"
        started = time.perf_counter()
        fresh = not cache.exists()
        maps = cached_maps(stage, [e.path for e in entries], args.image_size, backbone.mean,
                           backbone.std, cache)
        extract_s = round(time.perf_counter() - started, 1) if fresh else None
        held = np.array([index[e.path] for e in holdout])
        start_rows = np.array([index[e.path] for e in labeled])
        n_train = len(train_entries)
        all_rows = np.setdiff1d(np.arange(n_train), held)
        unlabeled = np.setdiff1d(all_rows, start_rows)
        test_rows = np.arange(n_train, len(entries))
        results = []
        runs = [("last-stage", start_rows, seeds), ("+ consistency", start_rows, seeds),
                ("all labels", all_rows, seeds[:1])]
        for name, rows, run_seeds in runs:
            for seed in run_seeds:
                backbone.module.load_state_dict(pristine)  # every run starts from ImageNet
                if name == "+ consistency":
                    head, info = with_consistency(stage, maps, y, rows, held, unlabeled, len(classes),
                                                  width=backbone.num_features, seed=seed, epochs=epochs,
                                                  tau=args.tau, lambda_u=args.lambda_u, mu=args.mu,
                                                  drop=args.drop)
                else:
                    head, info = last_stage(stage, maps, y, rows, held, len(classes), seed=seed,
                                            epochs=all_epochs if name == "all labels" else epochs)
                f1 = test_f1(stage, head, maps, y, test_rows, classes)
                results.append({"trainer": name, "seed": seed, "labels": int(len(rows) + len(held)),
                                "macro_f1": f1, **info})
                print(results[-1], flush=True)
        map_shape, map_mib = stage.map_shape, maps.nbytes / 2**20
    rows_md = []
    for name, _, _ in runs:
        got = [r for r in results if r["trainer"] == name]
        f1s = [r["macro_f1"] for r in got]
        sd = f" +- {np.std(f1s, ddof=1):.3f}" if len(f1s) > 1 else ""
        rows_md.append([name, got[0]["labels"], f"{np.mean(f1s):.3f}{sd}",
                        " / ".join(f"{v:.3f}" for v in f1s),
                        " / ".join(f"{r['best_epoch']} of {r['epochs_run']}" for r in got),
                        f"{np.mean([r['train_seconds'] for r in got]):.0f}",
                        " / ".join(str(r.get("unlabeled_used", "-")) for r in got)])
    body = "\n".join([
        f"tf_efficientnet_lite0 at {args.image_size} px: blocks 0-5 frozen and run once (their "
        f"{map_shape} output cached as float16, {map_mib:.0f} MiB for {len(entries):,} images; "
        "extraction " + (f"{extract_s} s" if extract_s is not None else "reused from an earlier run")
        + "). Trained: block 6, the head convolution and the round's MLP head, with "
        "`sslall.model._last_stage.train_last_stage` and the round's defaults (`+ consistency` adds a "
        f"FixMatch-style loss on the unlabeled training maps: tau {args.tau}, lambda_u "
        f"{args.lambda_u}, mu {args.mu}, channel dropout {args.drop} on the flipped strong view). "
        f"Split seed 0 test set ({len(test_rows):,} images); starting labels = `sslall "
        f"simulate`'s initial split at {args.fraction:.0%}, seed {args.split_seed} (holdout "
        "included in the label count); \"all labels\" is every file of the training tree. "
        "Training seeds as listed.", "",
        table(["trainer", "labels", "test macro-F1 (mean +- sd)", "per seed", "best epoch",
               "train s (mean)", "unlabeled share trained"], rows_md), ""])
    write_section("last-stage", "pbc-128: the last stage on cached maps, with and without "
                  "consistency training", body, quick=args.quick)
    emit({"benchmark": "last-stage", "results": results, "extract_seconds": extract_s})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
