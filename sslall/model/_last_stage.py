"""A backbone cut before its last stage, for `model.mode = "last-stage"`.

Head mode trains on the frozen backbone's pooled features; finetune trains every layer on
images. In between, the frozen early stages run once per image (their output maps go to the
feature cache, like head-mode features) and only the last stage, the pooling and the head
train, on those maps. On pbc-128 that lifts macro-F1 from the same labels well above head
mode, for seconds of training per round on a CPU (BENCHMARKS.md, "Last stage").

`split_last_stage(module)` returns a `LastStage` whose parts are the backbone's own
submodules, not copies: training it updates `module` in place, so a checkpoint of the whole
backbone plus head is a normal full-image model (`sslall predict`, `explain`, `report` work
unchanged). `stage(frozen_maps(x))` equals `module(x)` up to the float16 rounding of the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sslall._progress import Progress
from sslall.errors import ModelError
from sslall.model._backbones import BaselineCNN
from sslall.model._devices import seeded
from sslall.model._heads import MLPHead
from sslall.model._train import TrainResult, fit_rows, param_groups, prepare_rows

__all__ = ["LastStage", "SUPPORTED", "can_split", "flip_maps", "split_last_stage",
           "stage_embeddings", "train_last_stage"]

Tensor = torch.Tensor
STAGE_LR_FACTOR = 0.3  # the pretrained last stage learns at 0.3x the head's rate (as benchmarked)
SCORE_BATCH = 256  # maps scored at once: a last stage's activations are large


@dataclass(frozen=True)
class _Family:
    frozen: Callable[[nn.Module, Tensor], Tensor]  # image batch -> maps before the last stage
    tail: Callable[[nn.Module, Tensor], Tensor]  # maps -> pooled features, as module(x) gives them
    trainable: Callable[[nn.Module], list[nn.Module]]  # the submodules `tail` trains


def _family(module: nn.Module) -> _Family | None:
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    if isinstance(module, EfficientNet):  # efficientnet*, tf_efficientnet*, mobilenetv2, mixnet, ...
        return _Family(
            frozen=lambda m, x: m.blocks[:-1](m.bn1(m.conv_stem(x))),
            tail=lambda m, x: m.forward_head(m.bn2(m.conv_head(m.blocks[-1](x))), pre_logits=True),
            trainable=lambda m: [m.blocks[-1], m.conv_head, m.bn2])
    if isinstance(module, ResNet):  # resnet*, resnext*, seresnet*, ...
        return _Family(
            frozen=lambda m, x: m.layer3(m.layer2(m.layer1(m.maxpool(m.act1(m.bn1(m.conv1(x))))))),
            tail=lambda m, x: m.forward_head(m.layer4(x), pre_logits=True),
            trainable=lambda m: [m.layer4])
    if isinstance(module, ConvNeXt):
        return _Family(
            frozen=lambda m, x: m.stages[:-1](m.stem(x)),
            tail=lambda m, x: m.forward_head(m.norm_pre(m.stages[-1](x)), pre_logits=True),
            trainable=lambda m: [m.stages[-1], m.norm_pre, m.head])
    if isinstance(module, BaselineCNN):  # the last conv block is its last stage
        return _Family(
            frozen=lambda m, x: m.features[:-4](x),
            tail=lambda m, x: torch.flatten(m.pool(m.features[-4:](x)), 1),
            trainable=lambda m: [m.features[-4:]])
    return None


SUPPORTED = "EfficientNet (efficientnet_*, tf_efficientnet_*), ResNet, ConvNeXt and baseline-cnn"


class LastStage(nn.Module):
    """The last stage of a backbone and its pooling, fed the cached maps of the stages before.

    `frozen_maps(x)` runs the frozen stages on an image batch; `forward(maps)` gives the pooled
    features `module(x)` would. `map_shape` is the per-image shape of the maps ([C, H, W]),
    set by `frozen_maps` or by the caller from the cache, and lets `forward` take rows
    flattened to [N, C*H*W] as the feature cache stores them.
    """

    def __init__(self, module: nn.Module, parts: _Family) -> None:
        super().__init__()
        self.module = module
        self._parts = parts
        self.map_shape: tuple[int, ...] | None = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters of the last stage; the frozen stages' are never handed to an optimizer."""
        return [p for part in self._parts.trainable(self.module) for p in part.parameters()]

    def set_input_size(self, image_size: int) -> None:
        """Learn `map_shape` for square `image_size` inputs (one blank image through the frozen
        stages), for when every map comes from the cache."""
        modes = {m: m.training for m in self.module.modules()}
        self.module.eval()
        try:
            with torch.inference_mode():
                device = next(self.module.parameters()).device
                self.frozen_maps(torch.zeros(1, 3, image_size, image_size, device=device))
        finally:
            for m, mode in modes.items():
                m.training = mode

    def frozen_maps(self, x: Tensor) -> Tensor:
        """[N, C*H*W] maps of the frozen stages (flattened for the feature cache)."""
        maps = self._parts.frozen(self.module, x)
        self.map_shape = tuple(maps.shape[1:])
        return maps.flatten(1)

    def forward(self, maps: Tensor) -> Tensor:
        if maps.ndim == 2:
            if self.map_shape is None:
                raise ModelError("LastStage got flattened maps but does not know their shape")
            maps = maps.reshape(len(maps), *self.map_shape)
        return self._parts.tail(self.module, maps)

    def train(self, mode: bool = True) -> LastStage:
        """Only the trainable parts switch mode; the frozen stages stay in eval."""
        self.training = mode
        self.module.eval()
        for part in self._parts.trainable(self.module):
            part.train(mode)
        if mode and hasattr(self.module, "drop_rate"):
            self.module.training = True  # timm applies its pre-logits dropout by module.training
        return self


def can_split(module: nn.Module) -> bool:
    """Whether `split_last_stage` knows where `module`'s last stage begins."""
    return _family(module) is not None


def split_last_stage(module: nn.Module, name: str = "") -> LastStage:
    """The `LastStage` of `module`, sharing its submodules.

    Raises:
        ModelError: the architecture has no known cut (only the families in `SUPPORTED` do).
    """
    found = _family(module)
    if found is None:
        label = f"'{name}' ({type(module).__name__})" if name else type(module).__name__
        raise ModelError(f'model.mode = "last-stage" does not know where the last stage of {label} '
                         f"begins; it supports {SUPPORTED}; use mode head or finetune")
    return LastStage(module, found)


def flip_maps(maps: Tensor, generator: torch.Generator, *, hflip: bool, vflip: bool) -> Tensor:
    """Flip each [N, C, H, W] map left-right and/or top-bottom with probability 1/2 (seeded).

    A cheap stand-in for image augmentation when the images themselves are not run.
    """
    for enabled, dim in ((hflip, 3), (vflip, 2)):
        if enabled:
            pick = torch.rand(len(maps), generator=generator) < 0.5
            maps = torch.where(pick.to(maps.device)[:, None, None, None], maps.flip(dim), maps)
    return maps


def stage_embeddings(stage: LastStage, maps: np.ndarray, device: torch.device, *,
                     batch_size: int = SCORE_BATCH, rows: Sequence[int] | None = None,
                     progress: Progress | None = None, step: str = "score") -> np.ndarray:
    """Pooled features [N, D] float32 of cached maps (all rows, or `rows`), in eval mode;
    `progress(step, done, total)` after each batch."""
    index = np.arange(len(maps)) if rows is None else np.asarray(rows, dtype=np.int64)
    was_training = stage.training
    stage.to(device).eval()
    out: list[np.ndarray] = []
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, len(index), batch_size):
                x = torch.as_tensor(np.asarray(maps[index[start:start + batch_size]], dtype=np.float32),
                                    device=device)
                out.append(stage(x).float().cpu().numpy())
                if progress is not None:
                    progress(step, min(start + batch_size, len(index)), len(index))
    finally:
        stage.train(was_training)
    if not out:
        return np.zeros((0, _pooled_width(stage, stage.map_shape, device)), np.float32)
    return np.concatenate(out)


def train_last_stage(
    stage: LastStage, maps: np.ndarray, y: np.ndarray, w: np.ndarray,
    val_maps: np.ndarray | None, val_y: np.ndarray | None, *, num_classes: int,
    hidden: Sequence[int], dropout: float, lr: float, weight_decay: float, epochs: int,
    batch_size: int, class_balance: str, patience: int, seed: int, device: torch.device,
    hflip: bool, vflip: bool, max_epoch_rows: int = 0, progress: Progress | None = None,
) -> tuple[MLPHead, TrainResult]:
    """Train `stage` (in place) and a new `MLPHead` on flattened cached maps [N, C*H*W].

    The loop, epoch size, weights, class balance and early stopping are `train_head`'s
    (`fit_rows`, an epoch capped at `max_epoch_rows` draws when > 0); the last stage learns at
    STAGE_LR_FACTOR x `lr`, and training batches are flipped (`flip_maps`). Both modules end
    holding the kept epoch's weights.
    """
    if stage.map_shape is None:
        raise ModelError("LastStage.map_shape is unknown; run frozen_maps or set it from the cache")
    x, y, w = prepare_rows(maps, y, w, num_classes, class_balance, epochs, batch_size)
    shape = stage.map_shape

    def augment(batch: Tensor, generator: torch.Generator) -> Tensor:
        return flip_maps(batch.reshape(len(batch), *shape), generator, hflip=hflip, vflip=vflip)

    with seeded(seed, device):
        head = MLPHead(_pooled_width(stage, shape, device), num_classes, hidden=hidden, dropout=dropout)
        model = nn.Sequential(stage, head).to(device)
        groups = [*param_groups(stage.trainable_parameters(), lr * STAGE_LR_FACTOR, weight_decay),
                  *param_groups(head, lr, weight_decay)]
        result = fit_rows(model, groups, x, y, w, val_maps, val_y, num_classes=num_classes,
                          epochs=epochs, batch_size=batch_size, lr=lr, class_balance=class_balance,
                          patience=patience, seed=seed, device=device,
                          augment=augment if hflip or vflip else None, score_batch=SCORE_BATCH,
                          max_epoch_rows=max_epoch_rows, progress=progress)
    model.load_state_dict(result.state)
    model.eval()
    return head, result


def _pooled_width(stage: LastStage, shape: tuple[int, ...], device: torch.device) -> int:
    """The width of the pooled features the last stage gives (one zero map through it)."""
    was_training = stage.training
    stage.to(device).eval()
    with torch.inference_mode():
        width = int(stage(torch.zeros(1, *shape, device=device)).shape[1])
    stage.train(was_training)
    return width
