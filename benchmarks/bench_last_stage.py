"""Fine-tuning only the last stage on cached intermediate maps (issue 4, pbc-128 option; an experiment).

The frozen-feature head tops out at 0.87-0.92 macro-F1 on pbc-128 with every label, and
whole-network fine-tuning on this CPU is too slow to help. The cheap middle road: run the
frozen first stages of tf_efficientnet_lite0 once, cache the output of its second-to-last
stage (192 x 7 x 7 at 224 px, float16), and train only the last stage (block 6), the 1x1 head convolution
and a linear classifier on those maps. The starting split is the one `sslall simulate` makes
(`initial_split`, same fraction, seed and holdout share), so "same labels" compares with the
simulate baselines; "all labels" trains on every training image. Early stopping on the holdout's
macro-F1; the test split (bench_simulate's) only gives the reported figure.

Not part of sslall's rounds: this measures whether the option is worth building.

    python benchmarks/bench_last_stage.py --keep /tmp/bsim            # pbc, 224 px, seed 0
    python benchmarks/bench_last_stage.py --quick                     # 24 images per class
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from _report import data_root, emit, table, work_folder, write_section
from bench_simulate import split
from torch import nn

from sslall.config import Config
from sslall.data import ImageDataset, eval_transform, make_loader
from sslall.importer import list_source
from sslall.metrics import classification_metrics
from sslall.models import create_backbone
from sslall.simulate import SimulationSpec, class_folders, initial_split

CUT = 6  # blocks[:CUT] stay frozen and are cached; blocks[CUT:] are trained


def trained_blocks(n_blocks: int) -> str:
    last = n_blocks - 1
    return f"block {last}" if CUT == last else f"blocks {CUT}-{last}"


def frozen_maps(module: nn.Module, paths: list[str], size: int, mean, std, out: Path) -> np.ndarray:
    """The output of blocks[:CUT] for every path, float16, memory-mapped at `out`."""
    loader = make_loader(ImageDataset(paths, eval_transform(size, mean, std), max_pixels=50_000_000),
                         batch_size=64, num_workers=1)
    maps = None
    with torch.inference_mode():
        for x, idx in loader:
            y = module.bn1(module.conv_stem(x))
            for block in module.blocks[:CUT]:
                y = block(y)
            if maps is None:
                maps = np.lib.format.open_memmap(out, mode="w+", dtype=np.float16,
                                                 shape=(len(paths), *y.shape[1:]))
            maps[idx.numpy()] = y.numpy().astype(np.float16)
    maps.flush()
    return maps


class LastStage(nn.Module):
    """blocks[CUT:] + conv_head + bn2 + pooling + a linear classifier, initialised from ImageNet."""

    def __init__(self, module: nn.Module, classes: int) -> None:
        super().__init__()
        self.blocks = copy.deepcopy(module.blocks[CUT:])
        self.conv_head = copy.deepcopy(module.conv_head)
        self.bn2 = copy.deepcopy(module.bn2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(module.num_features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_head(self.blocks(x)))
        return self.fc(self.drop(y.mean(dim=(2, 3))))


def predict(model: nn.Module, maps: np.ndarray, rows: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(rows), 256):
            x = torch.from_numpy(maps[rows[lo:lo + 256]].astype(np.float32))
            out.append(model(x).softmax(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def train(module: nn.Module, maps: np.ndarray, y: np.ndarray, rows: np.ndarray, val: np.ndarray,
          classes: int, *, epochs: int, seed: int, draws: int) -> tuple[nn.Module, dict]:
    """Class-balanced draws of >= `draws` rows an epoch; keep the epoch with the best holdout F1."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LastStage(module, classes)
    opt = torch.optim.AdamW([{"params": model.fc.parameters(), "lr": 1e-3},
                             {"params": [p for n, p in model.named_parameters()
                                         if not n.startswith("fc.")], "lr": 3e-4}],
                            weight_decay=1e-4)
    counts = np.bincount(y[rows], minlength=classes)
    p = 1.0 / counts[y[rows]]
    p /= p.sum()
    per_epoch = max(draws, len(rows))
    best, best_state, log = -1.0, None, []
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = rng.choice(rows, size=per_epoch, p=p)
        for lo in range(0, per_epoch, 32):
            batch = np.sort(order[lo:lo + 32])
            x = torch.from_numpy(maps[batch].astype(np.float32))
            target = torch.from_numpy(y[batch])
            x = torch.where(torch.rand(len(batch), 1, 1, 1) < 0.5, x.flip(3), x)  # cheap augmentation
            loss = nn.functional.cross_entropy(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        f1 = classification_metrics(y[val], predict(model, maps, val).argmax(1), None,
                                    [str(c) for c in range(classes)])["macro_f1"]
        log.append(round(f1, 4))
        if f1 > best:
            best, best_state = f1, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, {"epochs": epochs, "best_epoch": int(np.argmax(log)) + 1, "holdout_f1": log,
                   "train_seconds": round(time.perf_counter() - started, 1),
                   "rows_per_epoch": per_epoch}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--all-epochs", type=int, default=4, help="epochs with every label")
    ap.add_argument("--quick", action="store_true", help="24 images per class, 3 epochs")
    ap.add_argument("--keep", type=Path, help="reuse bench_simulate's split and keep the maps here")
    args = ap.parse_args()
    epochs = 3 if args.quick else args.epochs
    all_epochs = 2 if args.quick else args.all_epochs
    with work_folder(args.keep, "last-stage") as root:
        here = root / ("pbc-quick" if args.quick else "pbc")
        data = here / "data"
        if not (data / "test").is_dir():
            shutil.rmtree(data, ignore_errors=True)
            split(data_root() / "pbc-128", data, per_class=24 if args.quick else None)
        classes = class_folders(data / "train")
        train_entries = list_source(data / "train", "labeled", classes)
        test_entries = list_source(data / "test", "labeled", classes)
        spec = SimulationSpec(data / "train", data / "test", here, Config(classes=classes), 1,
                              label_fraction=args.fraction, seed=args.seed)
        labeled, holdout, _ = initial_split(train_entries, spec)
        entries = train_entries + test_entries
        index = {e.path: i for i, e in enumerate(entries)}
        y = np.array([classes.index(e.label) for e in entries])
        backbone = create_backbone("tf_efficientnet_lite0", pretrained=True)
        module = backbone.module.eval()
        cache = here / f"maps-{args.image_size}-cut{CUT}.npy"
        started = time.perf_counter()
        if cache.exists():
            maps, extract_s = np.load(cache, mmap_mode="r"), None
        else:
            maps = frozen_maps(module, [e.path for e in entries], args.image_size, backbone.mean,
                               backbone.std, cache)
            extract_s = round(time.perf_counter() - started, 1)
        held = np.array([index[e.path] for e in holdout])
        start_rows = np.array([index[e.path] for e in labeled])
        n_train = len(train_entries)
        all_rows = np.setdiff1d(np.arange(n_train), held)
        test_rows = np.arange(n_train, len(entries))
        results = []
        for name, rows, n_epochs in (("same labels", start_rows, epochs),
                                     ("all labels", all_rows, all_epochs)):
            model, info = train(module, maps, y, rows, held, len(classes), epochs=n_epochs,
                                seed=args.seed, draws=512)
            probs = predict(model, maps, test_rows)
            m = classification_metrics(y[test_rows], probs.argmax(1), probs, list(classes))
            results.append({"labels": name, "train_rows": int(len(rows)),
                            "holdout_rows": int(len(held)), "macro_f1": m["macro_f1"],
                            "accuracy": m["accuracy"], **info})
            print(results[-1], flush=True)
        map_shape, map_mib = tuple(maps.shape[1:]), maps.nbytes / 2**20
    rows = [[r["labels"], r["train_rows"] + r["holdout_rows"], f"{r['macro_f1']:.4f}",
             f"{r['accuracy']:.4f}", f"{r['best_epoch']} of {r['epochs']}",
             r["rows_per_epoch"], r["train_seconds"]] for r in results]
    body = "\n".join([
        f"tf_efficientnet_lite0 at {args.image_size} px: blocks 0-{CUT - 1} frozen and run once "
        f"(their {map_shape} output cached as float16, {map_mib:.0f} MiB "
        f"for {len(entries):,} images; extraction "
        + (f"{extract_s} s" if extract_s is not None else "reused from an earlier run") + "); "
        f"{trained_blocks(len(module.blocks))}, the head convolution and a linear classifier "
        "trained (AdamW, random "
        "horizontal flips of the maps, class-balanced draws, early stopping on the holdout's "
        f"macro-F1). Split seed 0 test set ({len(test_rows):,} images); starting labels = "
        f"`sslall simulate`'s initial split at {args.fraction:.0%}, seed {args.seed} (holdout "
        "included in the label count); \"all labels\" is every file of the training tree, byte-identical "
        "duplicates included.", "",
        table(["labels", "labels used", "test macro-F1", "test accuracy", "best epoch",
               "rows per epoch", "train s"], rows), ""])
    write_section("last-stage", "pbc-128: fine-tuning only the last stage on cached maps", body,
                  quick=args.quick)
    emit({"benchmark": "last-stage", "results": results, "extract_seconds": extract_s})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
