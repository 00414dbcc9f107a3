"""The sections of `sslall.toml` (`[model]`, `[train]`, ... `[tracking]`): one frozen dataclass each.

Every key is declared once, as a `setting(default, doc, ...)` field: its default, its
documentation (which the README mirrors) and what it allows. `sslall.config` assembles them
into `Config` and loads, validates and renders the file; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from sslall._settings import setting

__all__ = ["AugmentConfig", "DataConfig", "IndexConfig", "LabelStudioConfig", "ModelConfig",
           "OodConfig", "PreprocessConfig", "PseudoConfig", "RouteConfig", "RunsConfig",
           "TrackingConfig", "TrainConfig"]


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
