"""End-to-end training of a `Classifier` on images with augmentation (finetune mode).

The per-sample weights, class balance, loss and early stopping are those of
`sslall.model._train` (see its docstring); this adds the image pipeline, a backbone learning
slower than its new head, a cosine schedule, mixed precision on CUDA and torchrun (DDP).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler, WeightedRandomSampler

from sslall._progress import Progress
from sslall.data._datasets import ImageDataset, eval_transform, make_loader, train_transform
from sslall.model._backbones import Classifier
from sslall.model._devices import seeded
from sslall.model._distributed import DealtSampler, Dist, broadcast
from sslall.model._heads import head_sizes
from sslall.model._train import (
    BestEpoch,
    TrainResult,
    epoch_record,
    finite_loss,
    loss_weights,
    param_groups,
    prepare_rows,
    sampler_weights,
    val_scores,
)

if TYPE_CHECKING:
    from sslall.config import AugmentConfig, PreprocessConfig

__all__ = ["BACKBONE_LR_FACTOR", "finetune"]

BACKBONE_LR_FACTOR = 0.1  # the pretrained backbone moves 10x slower than the new head


def finetune(
    classifier: Classifier, train_paths: Sequence[str], train_y: np.ndarray, train_w: np.ndarray,
    val_paths: Sequence[str] = (), val_y: np.ndarray | None = None, *,
    image_size: int, mean: Sequence[float], std: Sequence[float], augment: AugmentConfig,
    dist: Dist | None = None,
    epochs: int = 30, batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 1e-4,
    class_balance: str = "sampler", patience: int = 5, seed: int = 0, device: torch.device | str = "cpu",
    num_workers: int = 0, max_pixels: int = 50_000_000, progress: Progress | None = None,
    preprocess: PreprocessConfig | None = None, train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
) -> TrainResult:
    """Train `classifier` end to end on images with augmentation; it is left holding the kept
    weights, in eval mode, on `device`.

    AdamW (backbone at lr * 0.1, head at lr; no weight decay on biases and norms), cosine
    schedule per step, and on CUDA only: channels_last and autocast (bf16 when supported, else
    fp16 with a GradScaler). Early stopping as in `train_head`; `progress("train", step,
    total_steps)` after each optimizer step.

    Under torchrun (`dist`), every rank calls this: DistributedDataParallel on `dist.device`;
    `batch_size` stays the global batch (each rank takes batch_size / world); the class-balanced
    draw is the single-process draw dealt out round-robin (so a global batch holds the same rows
    as in one process) and the unbalanced shuffle is a `DistributedSampler`. Augmentation and
    dropout are seeded per rank (seed + rank). Rank 0 scores the holdout and sends (F1, loss) to
    all, so every rank stops at the same epoch. BatchNorm statistics are per rank (local batch;
    DDP copies rank 0's buffers to the others): results differ from one process by that much.

    `train_ids`, `val_ids`: each path's sha256 as verified; every image is then decoded from
    the bytes that were hashed (see `ImageDataset`).

    Raises:
        ValueError, ModelError: as `train_head`; UnreadableImage if an image cannot be decoded;
        ChangedFile if, with ids, a file's bytes changed.
    """
    num_classes = head_sizes(classifier.head)[1]
    rows = np.arange(len(train_paths), dtype=np.float64)[:, None]  # prepare_rows drops weight-0 rows
    kept, y, w = prepare_rows(rows, train_y, train_w, num_classes, class_balance, epochs, batch_size)
    paths = [str(train_paths[int(i)]) for i in kept[:, 0]]
    ids = None if train_ids is None else [str(train_ids[int(i)]) for i in kept[:, 0]]
    has_val = val_y is not None and len(val_y) > 0
    device = torch.device(device) if dist is None else dist.device
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    cuda = device.type == "cuda"
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    started = time.perf_counter()
    with seeded(seed + rank, device):
        classifier.to(device)
        if cuda:
            classifier.to(memory_format=torch.channels_last)
        dataset = ImageDataset(paths, train_transform(image_size, mean, std, augment, preprocess),
                               max_pixels=max_pixels, ids=ids)
        sampler: Sampler | None = None
        if class_balance == "sampler":
            sampler = WeightedRandomSampler(sampler_weights(y, num_classes).tolist(), len(y),
                                            generator=torch.Generator().manual_seed(seed))
            if world > 1:
                sampler = DealtSampler(sampler, rank, world)
        elif world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        local_batch, local_rows = max(1, batch_size // world), -(-len(y) // world)
        loader = make_loader(dataset, batch_size=local_batch, shuffle=sampler is None, sampler=sampler,
                             num_workers=num_workers, seed=seed + rank,  # no BatchNorm on 1 row:
                             drop_last=local_rows > local_batch and local_rows % local_batch == 1)
        model: nn.Module = classifier
        if world > 1:
            model = DistributedDataParallel(classifier, device_ids=[device.index] if cuda else None)
        val_loader = None
        if has_val and rank == 0:
            val_set = ImageDataset([str(p) for p in val_paths],
                                   eval_transform(image_size, mean, std, preprocess),
                                   max_pixels=max_pixels, ids=val_ids)
            val_loader = make_loader(val_set, batch_size=batch_size, num_workers=num_workers)
        yt = torch.as_tensor(y)
        wt = torch.as_tensor(loss_weights(y, w, num_classes, class_balance))
        head_ids = {id(p) for p in classifier.head.parameters()}
        groups = [*param_groups(classifier.backbone, lr * BACKBONE_LR_FACTOR, weight_decay, skip=head_ids),
                  *param_groups(classifier.head, lr, weight_decay)]
        optimizer = torch.optim.AdamW(groups)
        total_steps = max(1, epochs * len(loader))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        autocast = (lambda: torch.autocast("cuda", dtype=amp)) if amp is not None else nullcontext
        best, step = BestEpoch(patience), 0
        for epoch in range(1, epochs + 1):
            epoch_started = time.perf_counter()
            model.train()
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            total, seen = 0.0, 0
            for x, idx in loader:
                x = x.to(device, non_blocking=True)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    logits = model(x)
                ce = F.cross_entropy(logits.float(), yt[idx].to(device), reduction="none")
                loss = (ce * wt[idx].to(device)).mean()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                total, seen, step = total + float(loss.detach()) * len(idx), seen + len(idx), step + 1
                if progress is not None:
                    progress("train", step, total_steps)
            f1, nll = (_loader_scores(classifier, val_loader, val_y, device, autocast)
                       if val_loader else (None, None))
            if world > 1 and has_val:
                f1, nll = broadcast(dist, (f1, nll))  # one stopping decision for every rank
            best.history.append(epoch_record(epoch, finite_loss(total / max(seen, 1), epoch, lr), f1, nll,
                                             optimizer, epoch_started))
            if has_val and best.update(epoch, f1, nll, classifier):
                break
    if has_val:
        classifier.load_state_dict(best.state)
    else:
        best.keep(len(best.history), classifier)
    if cuda:
        classifier.to(memory_format=torch.contiguous_format)
    classifier.eval()
    return TrainResult(best.state, best.epoch, best.history, time.perf_counter() - started)


# --- implementation ---------------------------------------------------------------------


def _loader_scores(model: nn.Module, loader: DataLoader, val_y: np.ndarray, device: torch.device,
                   autocast: Callable[[], object]) -> tuple[float, float]:
    model.eval()
    logits: torch.Tensor | None = None
    with torch.inference_mode():
        for x, idx in loader:
            x = x.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = model(x).float().cpu()
            if logits is None:
                logits = torch.zeros(len(val_y), out.shape[1])
            logits[idx] = out
    assert logits is not None  # a validation loader is only made for a non-empty holdout
    return val_scores(logits, val_y)
