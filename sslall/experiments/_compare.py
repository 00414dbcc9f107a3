"""Backbones compared on one labelled set: same images, same split, same seed, same settings.

The images (a class-per-folder tree, or a workspace's labeled and holdout pools) are
deduplicated by content (byte-identical files would otherwise sit on both sides of the split),
then split once, stratified and seeded: `test_fraction` is the test set, and `val_fraction`
of the rest is the validation set that early stopping and temperature scaling use (the test set
chooses nothing). Each backbone is then trained exactly as a round trains it (`fit_learner`: head,
last-stage or finetune mode, the workspace's `[train]` settings), calibrated on the validation set, and
scored on the test set with the whole network (backbone + head, from the image files), which is
what the inference throughput measures.

Throughputs are images per second of wall time on this machine: training counts every image
pass of the training (head and last-stage mode: the train and validation images whose features
or maps are extracted in a fresh cache, plus the epochs over the cached rows; finetune:
training rows times epochs run); inference counts test images, decoding included.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sslall._fsutil import sha256_file
from sslall._progress import Progress
from sslall.config import Config, with_overrides
from sslall.errors import InputError, ModelError
from sslall.store._records import Sample

__all__ = ["CompareResult", "Labelled", "compare_backbones", "split_labelled"]

WEIGHTS = ("pretrained", "random")


@dataclass
class Labelled:
    """The images a comparison runs on: (sha256, path, class index) rows."""

    classes: tuple[str, ...]
    rows: list[tuple[str, str, int]]
    duplicates: int = 0


@dataclass
class CompareResult:
    """One table row per backbone (or the reason it could not run), plus the shared setup."""

    setup: dict
    rows: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"setup": self.setup, "backbones": self.rows}

    def markdown(self) -> str:
        """The table as Markdown (per-class F1 in one column, class order as in `setup`)."""
        head = ("| backbone | accuracy | macro-F1 | per-class F1 | parameters | train img/s "
                "| inference img/s |\n|---|---|---|---|---|---|---|\n")
        lines = []
        for r in self.rows:
            if r.get("error"):
                reason = r["error"].split(";")[0]  # the hint after ';' is in compare.json
                lines.append(f"| {r['backbone']} | not run: {reason} | | | | | |")
                continue
            per = " / ".join(f"{v:.3f}" for v in r["per_class_f1"].values())
            lines.append(f"| {r['backbone']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {per} "
                         f"| {r['parameters'] / 1e6:.2f} M | {r['train_images_per_s']:.1f} "
                         f"| {r['inference_images_per_s']:.1f} |")
        return head + "\n".join(lines) + "\n"


def labelled_from_folder(root: Path) -> Labelled:
    """A class-per-folder tree (sub-folder names are the classes), deduplicated by content."""
    from sslall.experiments._simulate import class_folders
    from sslall.store._sources import list_source

    classes = class_folders(root)
    entries = list_source(root, "labeled", classes)
    return _dedupe(classes, [(sha256_file(e.path), e.path, classes.index(e.label or ""))
                             for e in entries])


def labelled_from_store(store, classes: tuple[str, ...]) -> Labelled:
    """A workspace's human labels: its labeled and holdout pools."""
    return _dedupe(classes, [(s.id, s.path, classes.index(s.label))
                             for s in store.samples(("labeled", "holdout")) if s.label in classes])


def split_labelled(data: Labelled, *, test_fraction: float, val_fraction: float, seed: int
                   ) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) row indices: stratified per class, seeded, each class with at
    least one training and one validation row (and one test row when it has 3 or more)."""
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
        raise InputError(f"--test-fraction and --val-fraction must be in (0, 1), got "
                         f"{test_fraction} and {val_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.array([c for _, _, c in data.rows])
    train, val, test = [], [], []
    for c, name in enumerate(data.classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            raise InputError(f"class {name!r} has {len(idx)} image(s); a comparison needs at "
                             "least 3 per class (train, validation, test)")
        idx = idx[rng.permutation(len(idx))]
        n_test = min(max(int(round(test_fraction * len(idx))), 1), len(idx) - 2)
        rest = idx[n_test:]
        n_val = min(max(int(round(val_fraction * len(rest))), 1), len(rest) - 1)
        test += idx[:n_test].tolist()
        val += rest[:n_val].tolist()
        train += rest[n_val:].tolist()
    return sorted(train), sorted(val), sorted(test)


def compare_backbones(
    config: Config, data: Labelled, backbones: Sequence[str], *, mode: str, weights: str,
    test_fraction: float = 0.3, val_fraction: float = 0.2, image_size: int | None = None,
    cache_dir: Path | None = None, progress: Progress | None = None,
) -> CompareResult:
    """Train and test every backbone on the same split (see the module docstring).

    A backbone whose weights cannot be had (offline, no weights file) gets a row with `error`
    and the others still run; unknown names are refused before anything is trained.
    """
    from sslall.model._backbones import check_backbone_name

    if weights not in WEIGHTS:
        raise InputError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    for name in backbones:
        check_backbone_name(name)
    train, val, test = split_labelled(data, test_fraction=test_fraction,
                                      val_fraction=val_fraction, seed=config.train.seed)
    setup = {"classes": list(data.classes), "images": len(data.rows),
             "duplicates_dropped": data.duplicates, "train": len(train), "validation": len(val),
             "test": len(test), "mode": mode, "weights": weights, "seed": config.train.seed,
             "image_size": image_size or "each backbone's own", "epochs": config.train.epochs,
             "head_hidden": list(config.train.head_hidden),
             "head_ensemble": config.train.head_ensemble,
             "preprocess": dataclasses.asdict(config.preprocess)}
    result = CompareResult(setup)
    with tempfile.TemporaryDirectory(prefix="sslall-compare-") as tmp:
        for name in backbones:
            try:
                row = _one(config, data, name, train, val, test, mode=mode, weights=weights,
                           image_size=image_size, cache_dir=Path(cache_dir or tmp),
                           progress=progress)
            except ModelError as exc:
                row = {"backbone": name, "error": str(exc)}
            result.rows.append(row)
    if not any("error" not in r for r in result.rows):
        raise ModelError("no backbone could be trained: " + "; ".join(
            f"{r['backbone']}: {r['error']}" for r in result.rows))
    return result


def _one(config: Config, data: Labelled, name: str, train: list[int], val: list[int],
         test: list[int], *, mode: str, weights: str, image_size: int | None, cache_dir: Path,
         progress: Progress | None) -> dict:
    import torch

    from sslall.decide._metrics import classification_metrics, softmax
    from sslall.model._backbones import create_backbone
    from sslall.model._features import predict
    from sslall.model._learner import fit_learner
    from sslall.store._snapshot import Snapshot

    size = image_size or create_backbone(name, pretrained=False).input_size
    cfg = with_overrides(config, model={"backbone": name, "mode": mode, "image_size": size,
                                        "pretrained": weights == "pretrained", "weights": ""})
    rows = [_sample(data, i, "labeled") for i in train] + [_sample(data, i, "holdout") for i in val]
    snapshot = Snapshot(data.classes, rows)
    started = time.perf_counter()
    learner = fit_learner(cfg, snapshot, cache_dir=cache_dir, seed=cfg.train.seed,
                          progress=progress)
    train_s = time.perf_counter() - started
    passes = (len(train) * sum(learner.train_report["epochs_run"]) if learner.mode == "finetune"
              else len(rows))  # one pass of the (frozen part of the) backbone over the images
    temperature = learner.calibrate(learner.score(rows), snapshot).temperature
    model = learner.classifier().eval()
    samples = [(data.rows[i][0], data.rows[i][1]) for i in test]
    started = time.perf_counter()
    out = predict(model, samples, image_size=size, mean=learner.backbone.mean,
                  std=learner.backbone.std, batch_size=cfg.train.batch_size, device=learner.device,
                  num_workers=cfg.train.num_workers, max_pixels=cfg.data.max_pixels,
                  preprocess=cfg.preprocess)
    infer_s = time.perf_counter() - started
    probs = softmax(out.logits, temperature)
    y = np.array([data.rows[i][2] for i in test])
    m = classification_metrics(y, probs.argmax(1), probs, list(data.classes))
    params = sum(int(p.numel()) for p in model.parameters())
    del model, learner
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"backbone": name, "image_size": size, "accuracy": m["accuracy"],
            "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            "ece": m["ece"], "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
            "parameters": params, "temperature": temperature,
            "train_seconds": round(train_s, 3), "train_images_per_s": passes / train_s,
            "inference_seconds": round(infer_s, 3), "inference_images_per_s": len(test) / infer_s}


def _sample(data: Labelled, i: int, pool: str) -> Sample:
    sid, path, c = data.rows[i]
    return Sample(sid, path, pool, data.classes[c], "import", None, None, 1.0, None, 0, None, "", "")


def _dedupe(classes: tuple[str, ...], rows: list[tuple[str, str, int]]) -> Labelled:
    seen: dict[str, tuple[str, str, int]] = {}
    for row in rows:
        seen.setdefault(row[0], row)
    if not seen:
        raise InputError("no labelled images to compare on")
    return Labelled(classes, list(seen.values()), duplicates=len(rows) - len(seen))
