"""The workspace configuration, `sslall.toml`: schema, defaults and validation.

The config is a tree of frozen dataclasses validated once at load. Each key is declared once, as
a `setting(default, doc, ...)` field holding its documentation (which the README mirrors) and its
allowed values or range; an unknown key or a bad value raises `ConfigError` naming the key and
what is allowed. `route.strategy` and `pseudo.policy` accept whatever is registered (see
`sslall._settings`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslall._keychecks import (
    FOLDS_SCHEMA,
    PROJECT_SCHEMA,
    PSEUDO_WEIGHT_SCHEMA,
    URL_SCHEMA,
    check_folds,
    check_http_url,
    check_project,
    check_pseudo_weight,
)
from sslall._settings import REQUIRED, Setting, check_value, setting, setting_of
from sslall.errors import ConfigError, NotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAME = "sslall.toml"
# Starts and ends with a non-space (a folder name: "L1 " and "L1" must not both exist), no newline (\Z)
CLASS_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.+-]{0,62}[A-Za-z0-9_.+-])?\Z")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = setting("tf_efficientnet_lite0",
                            "any timm model name, or 'baseline-cnn' (small CNN from scratch)")
    pretrained: bool = setting(
        True, "load ImageNet weights (offline for tf_efficientnet_lite0, hub otherwise)")
    weights: str = setting("", "path to a .safetensors weights file; overrides `pretrained`")
    image_size: int = setting(224, "input side in pixels", within="[16, 1024]")
    feature_scales: int = setting(
        2, "also pool the last N intermediate stages into the features (0 = final only)",
        within="[0, 4]")
    mode: str = setting(
        "auto", "head (frozen backbone + MLP head on cached features), last-stage (frozen early "
        "stages cached, last stage + head trained), finetune, or auto (finetune on a GPU; on a "
        "CPU last-stage for trained weights, else head)",
        choices=("auto", "head", "last-stage", "finetune"))
    device: str = setting("auto", "auto, cpu, cuda or mps", choices=("auto", "cpu", "cuda", "mps"))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(30, "maximum training epochs per round", within="[1, inf]")
    batch_size: int = setting(32, "training and scoring batch size", within="[1, inf]")
    lr: float = setting(1e-3, "learning rate of the head", within="(0, inf]")
    weight_decay: float = setting(1e-4, "AdamW weight decay", within="[0, inf]")
    head_hidden: tuple[int, ...] = setting(
        (64, 64), "hidden layer widths of the MLP head, e.g. [64, 64]")
    dropout: float = setting(0.2, "dropout in the head (also drives BALD's MC dropout)",
                             within="[0, 1)")
    head_ensemble: int = setting(
        5, "head mode: heads trained with different seeds, probabilities averaged", within="[1, 32]")
    class_balance: str = setting(
        "sampler", "sampler (class-balanced sampling), loss (class weights) or none",
        choices=("sampler", "loss", "none"))
    pseudo_weight: str | float = setting(
        "confidence", "'confidence' (weight = calibrated confidence) or a number in (0, 1]",
        check=check_pseudo_weight, schema=PSEUDO_WEIGHT_SCHEMA)
    hard_weight: float = setting(
        2.0, "weight of low-confidence labeled samples in the next training", within="[0, inf]")
    patience: int = setting(5, "early stopping patience in epochs, on holdout macro-F1",
                            within="[1, inf]")
    seed: int = setting(0, "random seed; CPU runs with the same seed are reproducible",
                        within="[0, inf]")
    num_workers: int = setting(
        1, "image-decoding worker processes (0 = decode in the main process)", within="[0, 64]")
    finetune_lr: float = setting(1e-4, "learning rate of the backbone in finetune mode",
                                 within="(0, inf]")
    stage_epoch_rows: int = setting(
        2048, "last-stage mode: the most rows an epoch draws, so a round's time stays flat as "
        "pseudo labels accumulate (0 = every row once)", within="[0, inf]")


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = setting(True, "random horizontal flips")
    vflip: bool = setting(True, "random vertical flips")
    rotation: float = setting(15.0, "random rotation range in degrees", within="[0, 180]")
    zoom: float = setting(0.1, "random zoom range as a fraction", within="[0, 0.9]")
    brightness: float = setting(0.1, "brightness jitter factor", within="[0, 1]")
    contrast: float = setting(0.1, "contrast jitter factor", within="[0, 1]")
    stain: float = setting(0.05, "H&E/Romanowsky stain jitter strength in HED space (0 disables)",
                           within="[0, 0.5]")
    turned_view: bool = setting(
        True, "last-stage mode: also cache the maps of each image turned 90 degrees, train on "
        "both views and average their logits when scoring and predicting")


@dataclass(frozen=True)
class PseudoConfig:
    threshold: float = setting(
        0.9, "calibrated confidence needed for a pseudo label, in (0, 1)", within="(0, 1)")
    # `registry`: any name registered with `sslall.decide._policies.register_policy`
    policy: str = setting(
        "fixed", "fixed (one threshold), adaptive (class-wise, FlexMatch-style) or propagation "
        "(the threshold on labels propagated over the trained head's kNN graph)",
        choices=("fixed", "adaptive", "propagation"), registry="policy")
    class_cap: bool = setting(True, "cap pseudo labels per class to keep the labeled class prior")
    knn_k: int = setting(10, "neighbours consulted by the kNN-agreement filter", within="[1, 1000]")
    knn_agreement: float = setting(
        0.7, "fraction of the k neighbours that must agree (0 disables)", within="[0, 1]")
    propagation_k: int = setting(
        50, "neighbours per cell in the label-propagation graph (policy propagation)",
        within="[1, 1000]")


@dataclass(frozen=True)
class RouteConfig:
    route: str = setting(
        "retrain", "where low-confidence unlabeled cells go: retrain, labelstudio or both",
        choices=("retrain", "labelstudio", "both"))
    # `registry`: any name registered with `sslall.decide._acquisition.register_strategy`
    strategy: str = setting(
        "margin", "acquisition function ranking cells for review", registry="strategy",
        choices=("margin", "entropy", "least-confidence", "bald", "coreset", "typiclust", "random"))
    budget: int = setting(20, "cells sent to review per round, at most", within="[0, inf]")
    max_review: int = setting(
        200, "cap on the outstanding review queue (cells sent, not yet answered); a round routes "
        "at most min(budget, max_review - outstanding); 200 = ten rounds of the default budget",
        within="[0, inf]")
    min_uncertainty: float = setting(
        0.0, "never route a cell whose uncertainty, 1 - its calibrated confidence, is below this "
        "(0.05: cells the model gives >= 95 % stay unrouted); 0 = off", within="[0, 1)")
    diversity: str = setting(
        "kmeans", "kmeans (one cell per cluster in a review batch) or none", choices=("kmeans", "none"))
    candidate_factor: int = setting(
        3, "kmeans diversity picks each review cell among this many times the budget of "
        "top-ranked candidates, never further down the ranking (1 = plain ranking)",
        within="[1, 100]")
    hard_threshold: float = setting(
        0.6, "labeled cells below this confidence are up-weighted next round", within="[0, 1]")
    label_issue_folds: int = setting(
        5, "folds of the out-of-fold heads that search the human labels for suspected errors "
        "(confident learning; listed in the round folder, status and the report); 0 = no search",
        check=check_folds, schema=FOLDS_SCHEMA)


@dataclass(frozen=True)
class DataConfig:
    max_pixels: int = setting(
        50_000_000, "images declaring more pixels are quarantined (decompression bombs)",
        within="[1, inf]")
    holdout_fraction: float = setting(
        0.0, "default fraction of labeled imports carved into the holdout", within="[0, 1)")


@dataclass(frozen=True)
class PreprocessConfig:
    """Literature preprocessing applied before the transforms (see `sslall.data._preprocess`)."""

    stain_norm: str = setting(
        "none", "stain normalisation before everything else: none, reinhard or macenko",
        choices=("none", "reinhard", "macenko"))
    clahe: bool = setting(False, "contrast-limited adaptive histogram equalisation of the lightness")
    clahe_clip: float = setting(2.0, "CLAHE clip limit (higher = more contrast)", within="(0, 40]")
    clahe_tiles: int = setting(8, "CLAHE tiles per image side", within="[1, 64]")
    mask: bool = setting(False, "HSV-threshold cell masking: keep stained cells, blank the background")
    mask_saturation: float = setting(
        0.2, "HSV saturation in [0, 1) a pixel needs to count as stained", within="[0, 1)")
    mask_hue_low: float = setting(
        0.0, "lowest hue in degrees of a stained pixel (low > high wraps over 0)", within="[0, 360]")
    mask_hue_high: float = setting(360.0, "highest hue in degrees of a stained pixel",
                                   within="[0, 360]")
    mask_background: str = setting(
        "white", "what the background becomes: white or mean (its mean colour)",
        choices=("white", "mean"))


@dataclass(frozen=True)
class IndexConfig:
    """faiss nearest-neighbour search (kNN agreement, coreset); see `sslall.decide._index`."""

    approx_above: int = setting(
        200_000, "kNN searches over more reference rows than this use an approximate index",
        within="[0, inf]")
    approx: str = setting("auto", "the approximate index: auto (= ivf), ivf or hnsw; both store float16",
                          choices=("auto", "ivf", "hnsw"))


@dataclass(frozen=True)
class LabelStudioConfig:
    """Where the review queue goes for annotators; `url = ""` means not configured.

    The API key is deliberately not a key here: it comes from `$LABEL_STUDIO_API_KEY` or from
    the file `api_key_file` names, so a config file can be shared without leaking it.
    """

    url: str = setting(
        "", "Label Studio server, e.g. http://127.0.0.1:8080; empty = not configured",
        check=check_http_url, schema=URL_SCHEMA)
    project: str = setting(
        "sslall review", "project title (created by the first push) or numeric id", check=check_project,
        schema=PROJECT_SCHEMA)
    images: str = setting(
        "local-files", "local-files (server reads document_root) or upload (files are sent)",
        choices=("local-files", "upload"))
    document_root: str = setting(
        "", "the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (local-files)")
    batch_size: int = setting(100, "tasks per request when pushing and pulling", within="[1, 1000]")
    api_key_file: str = setting("", "file holding the API key; else $LABEL_STUDIO_API_KEY")
    timeout: float = setting(10.0, "seconds to wait for one answer of the server", within="(0, 600]")
    round_after: int = setting(0, "`sslall serve`: start a round once this many cells were "
                               "labelled through its webhook (0 = never)", within="[0, inf]")


@dataclass(frozen=True)
class RunsConfig:
    """The round folders `runs/round-NNNN/` (see `sslall.report._prune`)."""

    keep_last: int = setting(
        0, "after each round keep the folders of the last N rounds, the promoted round and the "
        "best by holdout macro-F1, removing the others (0 = keep every round)", within="[0, inf]")


@dataclass(frozen=True)
class OodConfig:
    """Out-of-distribution flags on predictions (see `sslall.decide._ood`)."""

    quantile: float = setting(
        0.99, "a cell is OOD (verdict unknown) when its distance to the k nearest human-labelled "
        "training cells is above this quantile of the holdout's distances", within="[0.5, 1]")
    k: int = setting(5, "training neighbours the OOD distance averages over", within="[1, 100]")
    max_reference: int = setting(
        20_000, "human-labelled training embeddings a round keeps for OOD scoring (a seeded "
        "sample above this)", within="[2, inf]")


@dataclass(frozen=True)
class TrackingConfig:
    """Where rounds are logged besides their folder (see `sslall.report._tracking`)."""

    tensorboard: str = setting(
        "", "folder for TensorBoard event files, relative to the workspace; empty = off")
    mlflow: str = setting(
        "", "MLflow tracking URI, e.g. file:./mlruns or http://host:5000; empty = off")


@dataclass(frozen=True)
class Config:
    classes: tuple[str, ...] = setting(REQUIRED, "the class names, in order (2 or more, unique)")
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    route: RouteConfig = field(default_factory=RouteConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    labelstudio: LabelStudioConfig = field(default_factory=LabelStudioConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# the [section] tables, in file order: each section field's default factory is its dataclass
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)
                             if f.default_factory is not dataclasses.MISSING}


def config_keys() -> list[str]:
    """Every key of `sslall.toml`, dotted (``"route.strategy"``), in the file's order."""
    return ["classes", *(f"{name}.{f.name}" for name, cls in SECTIONS.items()
                         for f in dataclasses.fields(cls))]


def key_setting(key: str) -> Setting:
    """The declaration of a dotted key: ``.doc``, ``.choices`` (built-in), ``.allowed()`` (now).

    Raises:
        KeyError: no such key.
    """
    section, _, name = key.rpartition(".")
    cls = SECTIONS.get(section) if section else Config
    for f in dataclasses.fields(cls) if cls else ():
        if f.name == name and f.metadata:
            return setting_of(f)
    raise KeyError(key)


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
                "letters, digits, space, '_', '.', '+', '-', no space at either end; up to 64 "
                "characters",
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
        values[key] = check_value(f"{name}.{key}", value, fields[key].default, setting_of(fields[key]))
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
        f"# {key_setting('classes').doc}",
        f"classes = {_toml_value(config.classes)}",
    ]
    for name in SECTIONS:
        lines += ["", f"[{name}]"]
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}"
                         f"  # {setting_of(f).doc}")
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
           "ModelConfig", "PreprocessConfig", "PseudoConfig", "RouteConfig", "TrackingConfig", "TrainConfig",
           "config_from_dict", "config_keys", "key_setting", "load_config", "render_config",
           "with_overrides"]
