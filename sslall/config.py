"""The workspace configuration, `sslall.toml`: schema, defaults and validation.

The config is a tree of frozen dataclasses validated once at load. Every key is documented in
`KEY_DOCS` (which the README mirrors); an unknown key or a bad value raises `ConfigError` naming
the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslall.errors import ConfigError, NotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAME = "sslall.toml"
CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    weights: str = ""
    image_size: int = 224
    feature_scales: int = 2
    mode: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    head_hidden: tuple[int, ...] = (64, 64)
    dropout: float = 0.2
    head_ensemble: int = 5
    class_balance: str = "sampler"
    pseudo_weight: str | float = "confidence"
    hard_weight: float = 2.0
    patience: int = 5
    seed: int = 0
    num_workers: int = 1
    finetune_lr: float = 1e-4


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True
    vflip: bool = True
    rotation: float = 15.0
    zoom: float = 0.1
    brightness: float = 0.1
    contrast: float = 0.1
    stain: float = 0.05


@dataclass(frozen=True)
class PseudoConfig:
    threshold: float = 0.9
    policy: str = "fixed"
    class_cap: bool = True
    knn_k: int = 10
    knn_agreement: float = 0.7


@dataclass(frozen=True)
class RouteConfig:
    route: str = "retrain"
    strategy: str = "margin"
    budget: int = 20
    diversity: str = "kmeans"
    hard_threshold: float = 0.6


@dataclass(frozen=True)
class DataConfig:
    max_pixels: int = 50_000_000
    holdout_fraction: float = 0.0


@dataclass(frozen=True)
class PreprocessConfig:
    """Literature preprocessing applied before the transforms (see `sslall.data._preprocess`)."""

    stain_norm: str = "none"
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    mask: bool = False
    mask_saturation: float = 0.2
    mask_hue_low: float = 0.0
    mask_hue_high: float = 360.0
    mask_background: str = "white"


@dataclass(frozen=True)
class IndexConfig:
    """faiss nearest-neighbour search (kNN agreement, coreset); see `sslall.decide._index`."""

    approx_above: int = 200_000
    approx: str = "auto"


@dataclass(frozen=True)
class LabelStudioConfig:
    """Where the review queue goes for annotators; `url = ""` means not configured.

    The API key is deliberately not a key here: it comes from `$LABEL_STUDIO_API_KEY` or from
    the file `api_key_file` names, so a config file can be shared without leaking it.
    """

    url: str = ""
    project: str = "sslall review"
    images: str = "local-files"
    document_root: str = ""
    batch_size: int = 100
    api_key_file: str = ""
    timeout: float = 10.0


@dataclass(frozen=True)
class Config:
    classes: tuple[str, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labelstudio: LabelStudioConfig = field(default_factory=LabelStudioConfig)
    index: IndexConfig = field(default_factory=IndexConfig)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "augment": AugmentConfig,
    "pseudo": PseudoConfig,
    "route": RouteConfig,
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "labelstudio": LabelStudioConfig,
    "index": IndexConfig,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.mode": ("auto", "head", "last-stage", "finetune"),
    "index.approx": ("auto", "ivf", "hnsw"),
    "model.device": ("auto", "cpu", "cuda", "mps"),
    "train.class_balance": ("sampler", "loss", "none"),
    "pseudo.policy": ("fixed", "adaptive"),
    "route.route": ("retrain", "labelstudio", "both"),
    "route.strategy": (
        "margin", "entropy", "least-confidence", "bald", "coreset", "typiclust", "random",
    ),
    "route.diversity": ("kmeans", "none"),
    "labelstudio.images": ("local-files", "upload"),
    "preprocess.stain_norm": ("none", "reinhard", "macenko"),
    "preprocess.mask_background": ("white", "mean"),
}

# (low, high, inclusive-low, inclusive-high) for numbers; None = unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "model.image_size": (16, 1024, True, True),
    "index.approx_above": (0, None, True, True),
    "model.feature_scales": (0, 4, True, True),
    "train.epochs": (1, None, True, True),
    "train.head_ensemble": (1, 32, True, True),
    "train.batch_size": (1, None, True, True),
    "train.lr": (0, None, False, True),
    "train.finetune_lr": (0, None, False, True),
    "train.weight_decay": (0, None, True, True),
    "train.dropout": (0, 1, True, False),
    "train.hard_weight": (0, None, True, True),
    "train.patience": (1, None, True, True),
    "train.seed": (0, None, True, True),
    "train.num_workers": (0, 64, True, True),
    "augment.rotation": (0, 180, True, True),
    "augment.zoom": (0, 0.9, True, True),
    "augment.brightness": (0, 1, True, True),
    "augment.contrast": (0, 1, True, True),
    "augment.stain": (0, 0.5, True, True),
    "pseudo.threshold": (0, 1, False, False),
    "pseudo.knn_k": (1, 1000, True, True),
    "pseudo.knn_agreement": (0, 1, True, True),
    "route.budget": (0, None, True, True),
    "route.hard_threshold": (0, 1, True, True),
    "data.max_pixels": (1, None, True, True),
    "data.holdout_fraction": (0, 1, True, False),
    "preprocess.clahe_clip": (0, 40, False, True),
    "preprocess.clahe_tiles": (1, 64, True, True),
    "preprocess.mask_saturation": (0, 1, True, False),
    "preprocess.mask_hue_low": (0, 360, True, True),
    "preprocess.mask_hue_high": (0, 360, True, True),
    "labelstudio.batch_size": (1, 1000, True, True),
    "labelstudio.timeout": (0, 600, False, True),
}

KEY_DOCS: dict[str, str] = {
    "classes": "the class names, in order (2 or more, unique)",
    "model.backbone": "any timm model name, or 'baseline-cnn' (small CNN from scratch)",
    "model.pretrained": "load ImageNet weights (offline for tf_efficientnet_lite0, hub otherwise)",
    "model.weights": "path to a .safetensors weights file; overrides `pretrained`",
    "model.image_size": "input side in pixels",
    "model.feature_scales": "also pool the last N intermediate stages into the features (0 = final only)",
    "model.mode": "head (frozen backbone + MLP head on cached features), last-stage (frozen early "
                  "stages cached, last stage + head trained), finetune, or auto",
    "model.device": "auto, cpu, cuda or mps",
    "train.epochs": "maximum training epochs per round",
    "train.batch_size": "training and scoring batch size",
    "train.lr": "learning rate of the head",
    "train.finetune_lr": "learning rate of the backbone in finetune mode",
    "train.weight_decay": "AdamW weight decay",
    "train.head_hidden": "hidden layer widths of the MLP head, e.g. [64, 64]",
    "train.dropout": "dropout in the head (also drives BALD's MC dropout)",
    "train.head_ensemble": "head mode: heads trained with different seeds, probabilities averaged",
    "train.class_balance": "sampler (class-balanced sampling), loss (class weights) or none",
    "train.pseudo_weight": "'confidence' (weight = calibrated confidence) or a number in (0, 1]",
    "train.hard_weight": "weight of low-confidence labeled samples in the next training",
    "train.patience": "early stopping patience in epochs, on holdout macro-F1",
    "train.seed": "random seed; CPU runs with the same seed are reproducible",
    "train.num_workers": "image-decoding worker processes (0 = decode in the main process)",
    "augment.hflip": "random horizontal flips",
    "augment.vflip": "random vertical flips",
    "augment.rotation": "random rotation range in degrees",
    "augment.zoom": "random zoom range as a fraction",
    "augment.brightness": "brightness jitter factor",
    "augment.contrast": "contrast jitter factor",
    "augment.stain": "H&E/Romanowsky stain jitter strength in HED space (0 disables)",
    "pseudo.threshold": "calibrated confidence needed for a pseudo label, in (0, 1)",
    "pseudo.policy": "fixed (one threshold) or adaptive (class-wise, FlexMatch-style)",
    "pseudo.class_cap": "cap pseudo labels per class to keep the labeled class prior",
    "pseudo.knn_k": "neighbours consulted by the kNN-agreement filter",
    "pseudo.knn_agreement": "fraction of the k neighbours that must agree (0 disables)",
    "route.route": "where low-confidence unlabeled cells go: retrain, labelstudio or both",
    "route.strategy": "acquisition function ranking cells for review",
    "route.budget": "cells sent to review per round",
    "route.diversity": "kmeans (one cell per cluster in a review batch) or none",
    "route.hard_threshold": "labeled cells below this confidence are up-weighted next round",
    "data.max_pixels": "images declaring more pixels are quarantined (decompression bombs)",
    "data.holdout_fraction": "default fraction of labeled imports carved into the holdout",
    "preprocess.stain_norm": "stain normalisation before everything else: none, reinhard or macenko",
    "preprocess.clahe": "contrast-limited adaptive histogram equalisation of the lightness",
    "preprocess.clahe_clip": "CLAHE clip limit (higher = more contrast)",
    "preprocess.clahe_tiles": "CLAHE tiles per image side",
    "preprocess.mask": "HSV-threshold cell masking: keep stained cells, blank the background",
    "preprocess.mask_saturation": "HSV saturation in [0, 1) a pixel needs to count as stained",
    "preprocess.mask_hue_low": "lowest hue in degrees of a stained pixel (low > high wraps over 0)",
    "preprocess.mask_hue_high": "highest hue in degrees of a stained pixel",
    "preprocess.mask_background": "what the background becomes: white or mean (its mean colour)",
    "labelstudio.url": "Label Studio server, e.g. http://127.0.0.1:8080; empty = not configured",
    "labelstudio.project": "project title (created by the first push) or numeric id",
    "labelstudio.images": "local-files (server reads document_root) or upload (files are sent)",
    "labelstudio.document_root": "the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (local-files)",
    "labelstudio.batch_size": "tasks per request when pushing and pulling",
    "labelstudio.api_key_file": "file holding the API key; else $LABEL_STUDIO_API_KEY",
    "labelstudio.timeout": "seconds to wait for one answer of the server",
    "index.approx_above": "kNN searches over more reference rows than this use an approximate index",
    "index.approx": "the approximate index: auto (= ivf), ivf or hnsw; both store float16",
}


def _describe_type(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the default's type and the key's choices and range."""
    if key == "train.pseudo_weight":
        if value == "confidence":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
            return float(value)
        raise ConfigError(key, f"got {value!r}", "'confidence' or a number in (0, 1]")
    if key == "labelstudio.url" and value != "" and not (
        isinstance(value, str) and re.match(r"^https?://[^/\s?#]+(/\S*)?$", value)
    ):
        raise ConfigError(key, f"{value!r} is not an http(s) URL", '"" or e.g. "http://127.0.0.1:8080"')
    if key == "labelstudio.project" and not (
        isinstance(value, str) and (value.isdigit() or len(value.strip()) >= 3)
    ):
        raise ConfigError(key, f"got {value!r}", "a numeric id, or a title of 3 or more characters")
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise ConfigError(key, f"got {value!r}", "a list of positive integers")
        return tuple(value)
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(key, f"expected {_describe_type(expected)}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(key, f"got {value!r}", ", ".join(CHOICES[key]))
    if key in RANGES:
        low, high, incl_low, incl_high = RANGES[key]
        too_low = low is not None and (value < low if incl_low else value <= low)
        too_high = high is not None and (value > high if incl_high else value >= high)
        if too_low or too_high:
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            span = f"{'[' if incl_low else '('}{lo}, {hi}{']' if incl_high else ')'}"
            raise ConfigError(key, f"{value!r} is out of range", span)
    return value


def parse_classes(value: Any, key: str = "classes") -> tuple[str, ...]:
    """Validate a list of class names: 2+, unique, safe as folder names."""
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ConfigError(key, f"expected a list of class names, got {value!r}")
    if len(value) < 2:
        raise ConfigError(key, f"needs at least 2 classes, got {len(value)}")
    if len(set(value)) != len(value):
        dupes = sorted({c for c in value if value.count(c) > 1})
        raise ConfigError(key, f"duplicate class names {dupes}")
    for name in value:
        if not CLASS_NAME.match(name):
            raise ConfigError(
                key, f"class name {name!r} is not allowed",
                "letters, digits, space, '_', '.', '+', '-'; up to 64 characters",
            )
    return tuple(value)


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"expected a [{name}] table, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}", "unknown key", ", ".join(fields))
        default = fields[key].default
        values[key] = _coerce(f"{name}.{key}", value, default)
    return cls(**values)


def config_from_dict(raw: dict[str, Any], *, default_classes: tuple[str, ...] | None = None) -> Config:
    """Build and validate a `Config` from parsed TOML (`default_classes` when it names none)."""
    allowed = ["classes", *SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(key, "unknown key", ", ".join(allowed))
    if "classes" not in raw and default_classes is None:
        raise ConfigError("classes", "is missing", "a list of 2 or more class names")
    sections = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
    return Config(classes=parse_classes(raw.get("classes", list(default_classes or ()))), **sections)


def load_config(path: Path, *, default_classes: tuple[str, ...] | None = None) -> Config:
    """Read and validate `sslall.toml` (`default_classes` when the file names none)."""
    if not path.is_file():
        raise NotFoundError(f"no config file at {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path.name), f"is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path.name), "is not UTF-8 text") from None
    return config_from_dict(raw, default_classes=default_classes)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(config: Config) -> str:
    """Write a config as commented TOML (every key, with its documentation)."""
    lines = [
        "# sslall workspace configuration. Every key is documented in the README.",
        f"# {KEY_DOCS['classes']}",
        f"classes = {_toml_value(config.classes)}",
    ]
    for name in SECTIONS:
        lines += ["", f"[{name}]"]
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}"
                         f"  # {KEY_DOCS[f'{name}.{f.name}']}")
    return "\n".join(lines) + "\n"


def with_overrides(config: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some keys replaced, validated like the file (CLI flags use this)."""
    replaced = {}
    for name, values in sections.items():
        current = getattr(config, name)
        clean = {k: v for k, v in values.items() if v is not None}
        merged = {**dataclasses.asdict(current), **clean}
        merged = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
        replaced[name] = _build_section(name, SECTIONS[name], merged)
    return dataclasses.replace(config, **replaced)



__all__ = ["CONFIG_NAME", "AugmentConfig", "Config", "DataConfig", "IndexConfig", "LabelStudioConfig",
           "ModelConfig", "PreprocessConfig", "PseudoConfig", "RouteConfig", "TrainConfig",
           "config_from_dict", "load_config", "render_config", "with_overrides"]
