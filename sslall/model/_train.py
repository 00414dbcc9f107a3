"""Training on rows in memory: an MLP head on cached features (`train_head`) and its epoch loop
for any model (`fit_rows`, which last-stage mode in `sslall.model._last_stage` trains through
too), with the pieces end-to-end training (`sslall.model._finetune`) shares. Device, mode and
RNG helpers are in `sslall.model._devices`.

Every trainer takes per-sample weights (1 for a human label, the confidence or a constant factor
for a pseudo label, `hard_weight` for a hard example the last round routed back), balances
classes by a seeded `WeightedRandomSampler` or by class weights in the loss, and stops early on
the validation (holdout) macro-F1, keeping the best epoch's weights (the earlier epoch on a tie).
Samples of weight 0 are dropped before training, so they cannot influence it at all.

The loss is sum(w_i * CE_i) / batch size with the weights scaled to mean 1 over the training
set, so a batch of low-confidence pseudo labels moves the model less than a batch of human
labels. Training runs under a forked RNG seeded with `seed`: two runs on a CPU give identical
weights, and the caller's global RNG is untouched.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from sslall._progress import Progress
from sslall.errors import ModelError
from sslall.model._devices import one_cpu_thread, seeded
from sslall.model._heads import MLPHead

__all__ = ["CLASS_BALANCE", "BestEpoch", "TrainResult", "TrainSet", "epoch_record", "finite_loss",
           "fit_rows", "loss_weights", "param_groups", "prepare_rows", "sampler_weights", "train_head",
           "val_scores"]

log = logging.getLogger(__name__)

CLASS_BALANCE = ("sampler", "loss", "none")
# A head epoch draws at least this many rows (repeating a small training set), so that 70
# labeled cells get enough optimizer steps between two early-stopping checks; with one pass
# per epoch the best holdout score was picked from an undertrained head (see BENCHMARKS.md).
MIN_EPOCH_ROWS = 512


@dataclass
class TrainSet:
    """Training rows: features [N, D] (head mode) or image paths (finetune), labels, weights."""

    inputs: np.ndarray | Sequence[str]
    labels: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        if not len(self.inputs) == len(self.labels) == len(self.weights):
            raise ValueError(f"TrainSet needs equal lengths, got inputs {len(self.inputs)}, "
                             f"labels {len(self.labels)}, weights {len(self.weights)}")
        if not np.isfinite(self.weights).all() or (self.weights < 0).any():
            raise ValueError("sample weights must be finite and >= 0")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainResult:
    """The kept weights (CPU tensors), the epoch they come from, per-epoch history
    (`epoch_record` dicts), wall time."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def train_head(
    train_x: np.ndarray, train_y: np.ndarray, train_w: np.ndarray,
    val_x: np.ndarray | None = None, val_y: np.ndarray | None = None, *,
    num_classes: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.2, epochs: int = 30,
    batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4, class_balance: str = "sampler",
    patience: int = 5, seed: int = 0, device: torch.device | str = "cpu", progress: Progress | None = None,
) -> TrainResult:
    """Train an `MLPHead(D, num_classes, hidden, dropout)` on features with AdamW; an epoch
    draws max(N, MIN_EPOCH_ROWS) rows.

    With validation rows, stops after `patience` epochs without a better val macro-F1
    (`patience` < 1: never early) and keeps the best epoch; without, keeps the last epoch.
    `progress("train", epoch, epochs)` after each epoch.

    Raises:
        ValueError: inconsistent shapes, labels outside 0..num_classes-1, negative weights,
            no row of positive weight, or an unknown `class_balance`.
        ModelError: the loss became NaN/inf (learning rate too high for these features).
    """
    x = np.asarray(train_x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"train_x must be [N, D], got shape {x.shape}")
    x, y, w = prepare_rows(x, train_y, train_w, num_classes, class_balance, epochs, batch_size)
    device = torch.device(device)
    with seeded(seed, device), one_cpu_thread() if device.type == "cpu" else nullcontext():
        head = MLPHead(x.shape[1], num_classes, hidden=hidden, dropout=dropout).to(device)
        result = fit_rows(head, param_groups(head, lr, weight_decay), x, y, w, val_x, val_y,
                          num_classes=num_classes, epochs=epochs, batch_size=batch_size, lr=lr,
                          class_balance=class_balance, patience=patience, seed=seed, device=device,
                          progress=progress)
    log.debug("head trained: best epoch %d of %d", result.best_epoch, len(result.history))
    return result


def fit_rows(
    model: nn.Module, groups: list[dict], x: np.ndarray, y: np.ndarray, w: np.ndarray,
    val_x: np.ndarray | None, val_y: np.ndarray | None, *, num_classes: int, epochs: int,
    batch_size: int, lr: float, class_balance: str, patience: int, seed: int, device: torch.device,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    score_batch: int = 8192, max_epoch_rows: int = 0, progress: Progress | None = None,
) -> TrainResult:
    """The epoch loop of `train_head`, for any `model` on rows of an array already in memory
    (validated by `prepare_rows`; weight-0 rows dropped): AdamW over `groups`, class-balanced or
    shuffled draws of max(N, MIN_EPOCH_ROWS) rows an epoch (at most `max_epoch_rows` when it is
    > 0, so an epoch's cost stays flat as pseudo labels accumulate), `augment(batch, generator)`
    on each training batch, early stopping on the validation macro-F1 (validation scored `score_batch`
    rows at a time). The caller seeds (`seeded`) so that building `model` is seeded too.
    """
    has_val = val_x is not None and val_y is not None and len(val_y) > 0
    started = time.perf_counter()
    optimizer = torch.optim.AdamW(groups)
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(y, device=device)
    wt = torch.as_tensor(loss_weights(y, w, num_classes, class_balance), device=device)
    generator = torch.Generator().manual_seed(seed)
    draw = torch.as_tensor(sampler_weights(y, num_classes)) if class_balance == "sampler" else None
    best = BestEpoch(patience)
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        draws = max(len(y), MIN_EPOCH_ROWS)  # read at call time: benchmarks vary it
        if max_epoch_rows > 0:
            draws = min(draws, max_epoch_rows)
        order = (torch.multinomial(draw, draws, replacement=True, generator=generator)
                 if draw is not None else
                 torch.cat([torch.randperm(len(y), generator=generator)
                            for _ in range(-(-draws // len(y)))])[:draws])
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size].to(device)
            batch = xt[idx] if augment is None else augment(xt[idx], generator)
            loss = (F.cross_entropy(model(batch), yt[idx], reduction="none") * wt[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        f1, nll = _head_scores(model, val_x, val_y, device, score_batch) if has_val else (None, None)
        best.history.append(epoch_record(epoch, finite_loss(total / len(order), epoch, lr), f1, nll,
                                         optimizer, epoch_started))
        if progress is not None:
            progress("train", epoch, epochs)
        if has_val and best.update(epoch, f1, nll, model):
            break
    if not has_val:
        best.keep(len(best.history), model)
    model.eval()
    return TrainResult(best.state, best.epoch, best.history, time.perf_counter() - started)


# --- what `finetune` shares -------------------------------------------------------------


class BestEpoch:
    """Early stopping on validation macro-F1; a tie goes to the lower validation loss.

    A holdout of a few dozen cells gives the same F1 to many epochs; without the loss as
    tie-break the first of them, often an undertrained head, was kept.
    """

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)
        self.score: tuple[float, float] = (-math.inf, -math.inf)
        self.epoch = 0
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    def update(self, epoch: int, f1: float, loss: float, module: nn.Module) -> bool:
        """Record the epoch's scores; True when training should stop."""
        if (f1, -loss) > self.score:
            self.score = (f1, -loss)
            self.keep(epoch, module)
        return self.patience > 0 and epoch - self.epoch >= self.patience

    def keep(self, epoch: int, module: nn.Module) -> None:
        self.epoch = epoch
        self.state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def epoch_record(epoch: int, train_loss: float, f1: float | None, nll: float | None,
                 optimizer: torch.optim.Optimizer, started: float) -> dict:
    """One epoch of a `TrainResult.history`: the mean training loss, the holdout macro-F1 and
    loss (None without a holdout), the head's learning rate at the epoch's end (the last
    parameter group) and the epoch's wall time in seconds, validation included."""
    return {"epoch": epoch, "train_loss": train_loss, "val_macro_f1": f1, "val_loss": nll,
            "lr": float(optimizer.param_groups[-1]["lr"]),
            "seconds": round(time.perf_counter() - started, 4)}


def prepare_rows(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, num_classes: int, class_balance: str,
    epochs: int, batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate once and drop the rows of weight 0."""
    if class_balance not in CLASS_BALANCE:
        raise ValueError(f"class_balance must be one of {', '.join(CLASS_BALANCE)}, got {class_balance!r}")
    if epochs < 1 or batch_size < 1 or num_classes < 2:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, num_classes >= 2; got {epochs}, "
                         f"{batch_size}, {num_classes}")
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    w = np.asarray(w, dtype=np.float32).reshape(-1)
    if not len(x) == len(y) == len(w):
        raise ValueError(f"inputs ({len(x)}), labels ({len(y)}) and weights ({len(w)}) differ in length")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be class indices in 0..{num_classes - 1}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample weights must be finite and >= 0")
    if not np.isfinite(x).all():
        raise ValueError("training features contain NaN or infinite values")
    keep = w > 0
    if not keep.any():
        raise ValueError(f"no training row has a positive weight ({len(w)} rows)")
    return x[keep], y[keep], w[keep]


def loss_weights(y: np.ndarray, w: np.ndarray, num_classes: int, class_balance: str) -> np.ndarray:
    """Per-sample loss weights, times balanced class weights for `loss`, scaled to mean 1."""
    weight = w.astype(np.float64)
    if class_balance == "loss":
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        per_class = len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1.0))
        weight = weight * per_class[y]
    return (weight / weight.mean()).astype(np.float32)


def sampler_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Draw probabilities that give every present class the same expected share of a batch."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    return 1.0 / counts[y]


def param_groups(params: nn.Module | Iterable[nn.Parameter], lr: float, weight_decay: float,
                 skip: set[int] | None = None) -> list[dict]:
    """AdamW groups: weight decay on matrices and kernels only, not on biases and norm scales."""
    decay, plain = [], []
    for param in params.parameters() if isinstance(params, nn.Module) else params:
        if param.requires_grad and id(param) not in (skip or set()):
            (decay if param.ndim > 1 else plain).append(param)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
              {"params": plain, "lr": lr, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def finite_loss(loss: float, epoch: int, lr: float) -> float:
    """`loss` as a float; a NaN or infinite loss means training diverged (ModelError)."""
    if not math.isfinite(loss):
        raise ModelError(f"training diverged: the loss is {loss} at epoch {epoch}; lower the learning "
                         f"rate (now {lr:g}) or check the inputs")
    return float(loss)


def val_scores(logits: torch.Tensor, val_y: np.ndarray) -> tuple[float, float]:
    """(macro-F1, mean cross-entropy) of validation logits."""
    y = torch.as_tensor(np.asarray(val_y, dtype=np.int64))
    nll = float(F.cross_entropy(logits.float(), y))
    return _macro_f1(val_y, logits.argmax(1).numpy()), nll


# --- implementation ---------------------------------------------------------------------


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = np.asarray(y_true, dtype=np.int64)
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def _head_scores(head: nn.Module, val_x: np.ndarray, val_y: np.ndarray, device: torch.device,
                 chunk_rows: int = 8192) -> tuple[float, float]:
    head.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, len(val_x), chunk_rows):
            chunk = torch.as_tensor(np.asarray(val_x[start : start + chunk_rows], dtype=np.float32),
                                    device=device)
            logits.append(head(chunk).float().cpu())
    return val_scores(torch.cat(logits), val_y)
