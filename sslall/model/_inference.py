"""Using a saved round: load its checkpoint, predict images (files, PIL images, arrays), evaluate a
class-per-folder set."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslall._fsutil import sha256_file
from sslall.config import PreprocessConfig
from sslall.data._datasets import eval_transform
from sslall.data._images import IMAGE_SUFFIXES, MIN_SIDE, UnreadableImage, _to_rgb, load_rgb
from sslall.decide._metrics import classification_metrics, softmax
from sslall.decide._ood import OodCalibration, read_ood
from sslall.errors import InputError, NotFoundError
from sslall.model._backbones import build_classifier_from_checkpoint
from sslall.model._checkpoints import META_NAME, WEIGHTS_NAME, load_checkpoint
from sslall.model._devices import resolve_device
from sslall.store._pools import PoolStore
from sslall.store._records import POOLS
from sslall.workspace import Workspace

ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """One image's prediction, or the reason it could not be read.

    `path` is the path as given, or `<image N>` / `<array N>` for the N-th input when it was
    an in-memory image; `probs` are calibrated class probabilities (`Predictor.classes` order).
    `ood_score` is the out-of-distribution score (`sslall.decide._ood`) and `ood` whether it is
    above the threshold (the verdict is then "unknown", whatever `probs` says); both are None
    when the checkpoint's round recorded no OOD calibration (an older sslall).
    """

    path: str
    probs: np.ndarray | None
    error: str | None = None
    ood_score: float | None = None
    ood: bool | None = None


def checkpoint_preprocess(meta: dict) -> PreprocessConfig | None:
    """The preprocessing a checkpoint was trained with (None for checkpoints from before it)."""
    values = meta.get("preprocess")
    return PreprocessConfig(**values) if isinstance(values, dict) else None


class Predictor:
    """A checkpoint ready to classify cell images, calibrated with its stored temperature.

    `predict` takes file paths, PIL images and numpy arrays (mixed freely). Every input becomes
    RGB by the one rule of `sslall.data._images` (the rule the training images went through):

    - a path (`str` or `os.PathLike`) is read and checked like any imported file;
    - a PIL image is converted by its mode (L gray replicated, RGBA composited onto white, ...);
    - an array is first made a PIL image by shape and dtype: gray HxW or HxWx1 as `uint8` -> L,
      `uint16` -> I;16 (scaled to 0..255), `float32`/`float64` -> F (values in [0, 1], else
      min-max scaled); HxWx3 `uint8` -> RGB; HxWx4 `uint8` -> RGBA (onto white). Channels are
      last, colour order RGB (an OpenCV BGR array must be flipped first: `arr[..., ::-1]`).

    A prediction's `path` is the path as given, and for an in-memory input `<image N>` or
    `<array N>`, N being its position in the list. An input that cannot be used as a picture
    (a missing or corrupt file, a file over `max_pixels`, a picture under 8 pixels a side) gets a
    `Prediction` with `probs=None` and `error` set, so one bad file does not lose a batch; an
    input of the wrong kind (an array of another shape or dtype, an object that is no image)
    is the caller's mistake and raises `InputError` before anything is predicted.

    Args:
        checkpoint: a round's folder (`runs/round-NNNN`, `RoundResult.run_dir`) or either of
            its two files.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N" or "mps".
        ood_quantile: the OOD threshold's quantile of the round's calibration scores (the
            config's `ood.quantile`); None keeps the one the round was run with. `ood` is the
            loaded `OodCalibration`, None for a round folder without OOD files.

    Raises:
        NotFoundError: the checkpoint does not exist.
        ModelError: the checkpoint or its OOD files are damaged, or the device is not
            available here.
        ConfigError: `device` names no device.
        InputError: `ood_quantile` is outside (0, 1].

    Example:
        >>> predictor = Predictor(ws.round_dir(3), device="auto")  # doctest: +SKIP
        >>> [p] = predictor.predict([PIL.Image.open("cell.png")])  # doctest: +SKIP
        >>> predictor.classes[p.probs.argmax()], float(p.probs.max())  # doctest: +SKIP
        ('Pre-B', 0.97)
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu",
                 ood_quantile: float | None = None) -> None:
        state, meta = load_checkpoint(Path(checkpoint))
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.temperature = float(meta.get("temperature", 1.0))
        self.device = resolve_device(device)
        self.model = build_classifier_from_checkpoint(state, meta).to(self.device).eval()
        self.transform = eval_transform(int(meta["image_size"]), meta["mean"], meta["std"],
                                        checkpoint_preprocess(meta))
        self.max_pixels = int(meta.get("max_pixels", 50_000_000))
        self.ood = _load_ood(Path(checkpoint), ood_quantile)

    def predict(self, images: Sequence[ImageInput], batch_size: int = 32) -> list[Prediction]:
        """One `Prediction` per input, in input order (see the class docstring for the inputs).

        Raises:
            InputError: an input is of a kind `Predictor` does not take (checked for every input
                before any is predicted).
        """
        named = [_named_input(x, i) for i, x in enumerate(images)]
        out: list[Prediction | None] = [None] * len(named)
        batch: list[tuple[int, str, torch.Tensor]] = []
        for i, (name, picture) in enumerate(named):
            try:
                rgb = (load_rgb(name, max_pixels=self.max_pixels) if picture is None
                       else _in_memory_rgb(picture, name))
                batch.append((i, name, self.transform(rgb)))
            except UnreadableImage as exc:
                out[i] = Prediction(name, None, str(exc))
            if len(batch) == batch_size:
                self._run(batch, out)
                batch = []
        self._run(batch, out)
        return [p for p in out if p is not None]

    def _run(self, batch: list[tuple[int, str, torch.Tensor]], out: list[Prediction | None]) -> None:
        if not batch:
            return
        with torch.inference_mode():  # the round's embeddings: the same pooled features
            x = torch.stack([t for _, _, t in batch]).to(self.device)
            emb = self.model.features(x)
            logits = self.model.logits(x, emb).cpu().numpy()
        probs = softmax(logits, self.temperature)
        scores = flags = None
        if self.ood is not None:
            scores = self.ood.score(emb.float().cpu().numpy())
            flags = self.ood.flag(scores)
        for row, (i, name, _) in enumerate(batch):
            out[i] = Prediction(name, probs[row], None,
                                None if scores is None else float(scores[row]),
                                None if flags is None else bool(flags[row]))


def _load_ood(checkpoint: Path, quantile: float | None) -> OodCalibration | None:
    """The OOD calibration beside a checkpoint: in its folder, or the folder of the file given
    when that file has a round folder's name (a renamed pair has no OOD files of its own)."""
    if checkpoint.is_dir():
        found = read_ood(checkpoint)
    else:
        found = read_ood(checkpoint.parent) if checkpoint.name in (WEIGHTS_NAME, META_NAME) else None
    if found is None:
        return None
    cal = found[0]
    if quantile is None:
        return cal
    try:
        return cal.with_quantile(quantile)
    except ValueError as exc:
        raise InputError(f"ood quantile: {exc}") from None


def _named_input(x: object, i: int) -> tuple[str, Image.Image | None]:
    """(the prediction's name, the in-memory picture or None for a path) of input number `i`."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x), None
    if isinstance(x, Image.Image):
        return f"<image {i}>", x
    if isinstance(x, np.ndarray):
        return f"<array {i}>", _array_picture(x, i)
    raise InputError(f"input {i} is a {type(x).__name__}; Predictor takes file paths, PIL images "
                     "and numpy arrays")


def _array_picture(a: np.ndarray, i: int) -> Image.Image:
    """The PIL image an array stands for, by the rule in `Predictor`'s docstring."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2 and a.dtype in (np.uint8, np.uint16):
        return Image.fromarray(np.ascontiguousarray(a))  # L, I;16
    if a.ndim == 2 and a.dtype in (np.float32, np.float64):
        return Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))  # F
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(a))  # RGB, RGBA
    raise InputError(f"array {i} has shape {a.shape} and dtype {a.dtype}; Predictor takes HxW "
                     "or HxWx1 (uint8, uint16 or float), HxWx3 (RGB) or HxWx4 (RGBA) uint8 arrays")


def _in_memory_rgb(picture: Image.Image, name: str) -> Image.Image:
    """RGB by the package's one rule; refused, like a file, when it is under `MIN_SIDE` a side.

    `max_pixels` is not applied: it guards decoding, and this picture is decoded already.
    """
    width, height = picture.size
    if min(width, height) < MIN_SIDE:
        raise UnreadableImage(name, "too-small", f"is {width}x{height} pixels, under the minimum "
                                                 f"of {MIN_SIDE}x{MIN_SIDE}")
    try:
        picture.load()  # an image from Image.open is read only now
        return _to_rgb(picture)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(name, "undecodable", f"cannot be decoded: {exc}") from None


def evaluate_folder(predictor: Predictor, folder: Path, workspace: Workspace | None = None) -> dict:
    """Metrics of a checkpoint on a class-per-folder set (folders must be its classes).

    `ood` says how many images were flagged out of distribution and gives accuracy, macro-F1
    and ECE without them (`kept`; None when every image was flagged); it is None when the
    checkpoint has no OOD calibration.
    With `workspace`, `in_workspace` counts the evaluated images that are already in its pools
    (same bytes, so same sample id), per pool: a model scored on images it trained or
    calibrated on looks better than it is. Without one, `in_workspace` is None.

    Raises:
        NotFoundError: `folder` is not a folder.
        InputError: its sub-folders are not the checkpoint's classes, or no image is readable.
    """
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
    metrics["ood"] = _ood_metrics(predictor, [preds[i] for i in ok], y, probs)
    metrics["in_workspace"] = (None if workspace is None
                               else _in_workspace(workspace, [paths[i] for i in ok]))
    return metrics


def _ood_metrics(predictor: Predictor, preds: list[Prediction], y: np.ndarray,
                 probs: np.ndarray) -> dict | None:
    """The flagged count and the metrics of the images not flagged (see `evaluate_folder`)."""
    if predictor.ood is None:
        return None
    flagged = np.array([bool(p.ood) for p in preds])
    kept = None
    if not flagged.all():
        m = classification_metrics(y[~flagged], probs[~flagged].argmax(1), probs[~flagged],
                                   predictor.classes)
        kept = {k: m[k] for k in ("accuracy", "macro_f1", "ece")} | {"images": int((~flagged).sum())}
    return {"threshold": predictor.ood.threshold, "quantile": predictor.ood.quantile,
            "flagged": int(flagged.sum()), "kept": kept}


def _in_workspace(ws: Workspace, paths: list[Path]) -> dict:
    """How many of `paths` are in the workspace's pools (by sha256, the sample id), per pool."""
    found: Counter[str] = Counter()
    with PoolStore(ws.db_path, read_only=True) as store:
        for path in paths:
            try:
                sample = store.get(sha256_file(path))
            except OSError:  # gone since it was predicted: it was not counted as evaluated either
                continue
            if sample is not None:
                found[sample.pool] += 1
    return {"images": sum(found.values()), "pools": {p: found[p] for p in POOLS}}
