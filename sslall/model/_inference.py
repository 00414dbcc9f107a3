"""Using a saved round: load its checkpoint, predict images, evaluate a class-per-folder set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslall.config import PreprocessConfig
from sslall.data._datasets import eval_transform
from sslall.data._images import IMAGE_SUFFIXES, UnreadableImage, load_rgb
from sslall.decide._metrics import classification_metrics, softmax
from sslall.errors import InputError, NotFoundError
from sslall.model._backbones import build_classifier_from_checkpoint
from sslall.model._checkpoints import load_checkpoint
from sslall.store._pools import PoolStore
from sslall.workspace import Workspace


@dataclass
class Prediction:
    """One image's prediction, or the reason it could not be read."""

    path: str
    probs: np.ndarray | None
    error: str | None = None


def latest_checkpoint(ws: Workspace) -> Path:
    """The checkpoint of the last committed round (the store, not the folder listing, decides)."""
    with PoolStore(ws.db_path) as store:
        last = store.last_round()
    if last == 0:
        raise NotFoundError("no round has finished yet, so there is no checkpoint; run "
                            "`sslall round` first or pass --checkpoint")
    return ws.round_dir(last)


def checkpoint_preprocess(meta: dict) -> PreprocessConfig | None:
    """The preprocessing a checkpoint was trained with (None for checkpoints from before it)."""
    values = meta.get("preprocess")
    return PreprocessConfig(**values) if isinstance(values, dict) else None


class Predictor:
    """A checkpoint ready to classify images (calibrated with its stored temperature)."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        state, meta = load_checkpoint(checkpoint)
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.temperature = float(meta.get("temperature", 1.0))
        self.device = torch.device(device)
        self.model = build_classifier_from_checkpoint(state, meta).to(self.device).eval()
        self.transform = eval_transform(int(meta["image_size"]), meta["mean"], meta["std"],
                                        checkpoint_preprocess(meta))
        self.max_pixels = int(meta.get("max_pixels", 50_000_000))

    def predict(self, paths: Sequence[str | Path], batch_size: int = 32) -> list[Prediction]:
        out: list[Prediction] = []
        batch: list[tuple[str, torch.Tensor]] = []
        for p in paths:
            try:
                batch.append((str(p), self.transform(load_rgb(p, max_pixels=self.max_pixels))))
            except UnreadableImage as exc:
                out.append(Prediction(str(p), None, str(exc)))
            if len(batch) == batch_size:
                out += self._run(batch)
                batch = []
        out += self._run(batch)
        order = {str(p): i for i, p in enumerate(paths)}
        return sorted(out, key=lambda pr: order.get(pr.path, 0))

    def _run(self, batch: list[tuple[str, torch.Tensor]]) -> list[Prediction]:
        if not batch:
            return []
        with torch.inference_mode():
            logits = self.model(torch.stack([t for _, t in batch]).to(self.device)).cpu().numpy()
        probs = softmax(logits, self.temperature)
        return [Prediction(p, probs[i]) for i, (p, _) in enumerate(batch)]


def evaluate_folder(predictor: Predictor, folder: Path) -> dict:
    """Metrics of a checkpoint on a class-per-folder set (folders must be its classes)."""
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a folder")
    subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
    unknown = [d for d in subdirs if d not in predictor.classes]
    if unknown or not subdirs:
        raise InputError(f"{folder} must hold one sub-folder per class "
                         f"(allowed: {', '.join(predictor.classes)}); found {unknown or 'none'}")
    paths, labels = [], []
    for name in subdirs:
        for f in sorted((folder / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                paths.append(f)
                labels.append(predictor.classes.index(name))
    preds = predictor.predict(paths)
    ok = [i for i, p in enumerate(preds) if p.probs is not None]
    if not ok:
        raise InputError(f"no readable image under {folder}")
    probs = np.stack([preds[i].probs for i in ok])
    y = np.array([labels[i] for i in ok])
    metrics = classification_metrics(y, probs.argmax(1), probs, predictor.classes)
    metrics["images"] = len(ok)
    metrics["unreadable"] = [{"path": p.path, "error": p.error} for p in preds if p.error]
    return metrics
