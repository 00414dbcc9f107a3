"""The model side of a round: fit on labeled ∪ pseudo, score every row, calibrate, checkpoint.

Three modes behind one face (`Learner`):
- `head`: a frozen backbone whose features come from the on-disk cache (computed once per image,
  backbone, weights and transform), with an MLP head trained on top — seconds per round on a CPU.
- `last-stage`: the frozen early stages' maps come from the same cache; the backbone's last
  stage and an MLP head train on them (`sslall.model._last_stage`) — tens of seconds per round on a CPU.
- `finetune`: the whole network trained end to end with augmentation (AMP + channels_last on
  CUDA); scoring then runs the fine-tuned backbone.
In all, `Scores.embeddings` are the backbone's pooled features (in last-stage and finetune mode,
those of the trained network), used by kNN agreement, coreset, TypiClust and the report.
With `augment.turned_view`, last-stage mode also caches the maps of every image turned 90
degrees: the last stage trains on both views and the logits are the mean of the two (rotation
is a true symmetry of a smear, and flipping cached maps cannot stand in for it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sslall._faults import fault_point
from sslall._progress import Progress
from sslall.config import Config
from sslall.decide._metrics import expected_calibration_error, fit_temperature, softmax
from sslall.decide._scores import Scores
from sslall.model._backbones import (
    BASELINE_CNN,
    Backbone,
    Classifier,
    create_backbone,
    final_pool_only,
    turn,
)
from sslall.model._devices import resolve_device, resolve_mode
from sslall.model._distributed import Dist, gather_rows, shard_bounds
from sslall.model._feature_cache import FeatureCache
from sslall.model._features import extract_features, mc_dropout_probs, predict
from sslall.model._finetune import finetune
from sslall.model._heads import EnsembleHead, MLPHead, head_hidden, head_logits, head_sizes
from sslall.model._last_stage import (
    LastStage,
    can_split,
    split_last_stage,
    stage_embeddings,
    train_last_stage,
)
from sslall.model._train import train_head
from sslall.store._records import Sample

if TYPE_CHECKING:
    from sslall.store._snapshot import Snapshot

@dataclass
class Calibration:
    """Temperature fitted on the holdout and the calibrated probabilities of every row."""

    temperature: float
    probs: np.ndarray
    report: dict


def training_rows(config: Config, snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row indices, class indices, sample weights) of labeled ∪ pseudo rows.

    Human labels weigh 1 (or the hard-example weight the last round gave them); pseudo labels
    weigh their calibrated confidence, or the configured constant factor, times the weight the
    last round gave them (the propagation certainty; 1 under the other policies).
    """
    labels = snapshot.label_index()
    idx, weights = [], []
    factor = config.train.pseudo_weight
    for i, row in enumerate(snapshot.rows):
        if row.pool == "labeled":
            idx.append(i)
            weights.append(row.weight)
        elif row.pool == "pseudo":
            idx.append(i)
            base = float(row.confidence or 0.0) if factor == "confidence" else float(factor)
            weights.append(base * row.weight)
    rows = np.array(idx, dtype=np.int64)
    return rows, labels[rows], np.array(weights, dtype=np.float32)


class Learner:
    """A trained model for one round, in head, last-stage or finetune mode.

    `features` are the cached inputs of the snapshot's rows: pooled features (head mode) or the
    frozen stages' flattened maps (last-stage mode, with `stage` the trained last stage);
    `turned` the maps of the turned view (last-stage mode with `augment.turned_view`), or None.
    `history` has one entry per trained model (each head of an ensemble, the last stage, the
    finetuned network): its name, best epoch, seconds and per-epoch records (`epoch_record`).
    """

    def __init__(self, config: Config, backbone: Backbone, head: MLPHead, mode: str,
                 device: torch.device, features: np.ndarray | None, train_report: dict,
                 dist: Dist | None = None, stage: LastStage | None = None,
                 history: list[dict] | None = None, turned: np.ndarray | None = None) -> None:
        self.config = config
        self.dist = dist
        self.backbone = backbone
        self.head = head
        self.mode = mode
        self.device = device
        self.features = features
        self.train_report = train_report
        self.stage = stage
        self.history = history or []
        self.turned = turned

    def score(self, rows: Sequence[Sample], *, progress: Progress | None = None,
              mc_samples: int = 0) -> Scores:
        """Logits and embeddings of every row (head mode reuses the cached features).

        Under torchrun every rank calls this: finetune mode scores one contiguous shard of the
        rows per rank and gathers them on rank 0; ranks other than 0 get empty arrays.
        """
        cfg = self.config
        dist = self.dist
        if dist is not None and not dist.is_main and self.mode != "finetune":
            return _empty_scores(self)
        if self.mode != "finetune":
            embeddings = self._embeddings(self.features, progress, "score")
            logits = self._logits(embeddings, self.turned, progress, "score")
        else:
            classifier = self.classifier()
            lo, hi = shard_bounds(len(rows), dist)
            out = predict(classifier, [(r.id, r.path) for r in rows[lo:hi]],
                          image_size=cfg.model.image_size, mean=self.backbone.mean,
                          std=self.backbone.std, batch_size=cfg.train.batch_size,
                          device=self.device, num_workers=cfg.train.num_workers,
                          max_pixels=cfg.data.max_pixels, preprocess=cfg.preprocess,
                          progress=progress, step="score", verify_ids=True)
            logits, embeddings = out.logits, out.embeddings
            if dist is not None:
                logits, embeddings = _gather_scores(dist, logits, embeddings, len(rows))
                if not dist.is_main:
                    return _empty_scores(self)
        hidden = self._hidden(embeddings)
        mc = None
        if mc_samples:
            mc = mc_dropout_probs(self.head, embeddings, T=mc_samples, seed=cfg.train.seed)
        return Scores(np.asarray(logits, dtype=np.float32), embeddings, mc, hidden=hidden)

    def _hidden(self, embeddings: np.ndarray) -> np.ndarray | None:
        """The head's hidden features of every row when the pseudo-label policy propagates
        labels on them (`sslall.decide._propagation`); None otherwise (they are not free at
        a million cells)."""
        if self.config.pseudo.policy != "propagation" or not len(embeddings):
            return None
        return head_hidden(self.head, embeddings, self.device, self.config.train.batch_size * 8)

    def logits_for(self, samples: Sequence[tuple[str, str]], *, cache_dir: Path,
                   progress: Progress | None = None) -> np.ndarray:
        """Logits of images outside the snapshot ((sha256 id, path) pairs), e.g. a test set.

        Head and last-stage mode go through the feature cache, so a test set is extracted once
        per backbone.
        """
        cfg = self.config
        if self.mode != "finetune":
            views = [cached_inputs(cfg, self.backbone, self.stage, samples, cache_dir=cache_dir,
                                   device=self.device, progress=progress, turned=view,
                                   step="test, turned" if view else "test")
                     for view in ([False, True] if self.turned is not None else [False])]
            return self._logits(self._embeddings(views[0], progress, "test"),
                                views[1] if len(views) > 1 else None, progress, "test")
        model = self.classifier()
        out = predict(model, list(samples),
                      image_size=cfg.model.image_size, mean=self.backbone.mean,
                      std=self.backbone.std, batch_size=cfg.train.batch_size, device=self.device,
                      num_workers=cfg.train.num_workers, max_pixels=cfg.data.max_pixels,
                      progress=progress, step="test", preprocess=cfg.preprocess)
        return np.asarray(out.logits, dtype=np.float32)

    def classifier(self) -> Classifier:
        """The whole network (backbone + head), as a checkpoint saves it."""
        return Classifier(self.backbone.module, self.head, self.backbone.scales,
                          turned_view=self.turned is not None)

    def _logits(self, embeddings: np.ndarray, turned: np.ndarray | None,
                progress: Progress | None, step: str) -> np.ndarray:
        """The head's logits of the upright embeddings, averaged with the turned view's."""
        batch = self.config.train.batch_size * 8
        logits = head_logits(self.head, embeddings, self.device, batch)
        if turned is not None:
            turned_logits = head_logits(self.head, self._embeddings(turned, progress, f"{step}, turned"),
                                        self.device, batch)
            logits = (logits + turned_logits) / 2
        return logits

    def _embeddings(self, inputs: np.ndarray, progress: Progress | None, step: str) -> np.ndarray:
        """Pooled features of cached inputs: the inputs themselves in head mode."""
        if self.stage is None:
            return inputs
        return stage_embeddings(self.stage, inputs, self.device, progress=progress, step=step)

    def calibrate(self, scores: Scores, snapshot: Snapshot) -> Calibration:
        """Temperature scaling on the holdout; T = 1 when there is no holdout to fit it on."""
        holdout = snapshot.mask("holdout")
        y = snapshot.label_index()[holdout]
        report: dict = {"holdout": int(holdout.sum())}
        temperature = 1.0
        if holdout.any():
            temperature = float(fit_temperature(scores.logits[holdout], y))
            before = softmax(scores.logits[holdout], 1.0)
            after = softmax(scores.logits[holdout], temperature)
            report |= {"ece_before": expected_calibration_error(before, y),
                       "ece_after": expected_calibration_error(after, y)}
        else:
            report["note"] = "no holdout: temperature left at 1.0, thresholds act on raw softmax"
        report["temperature"] = temperature
        return Calibration(temperature, softmax(scores.logits, temperature), report)

    def checkpoint(self, *, temperature: float, round_no: int, metrics: dict | None
                   ) -> tuple[dict[str, torch.Tensor], dict]:
        """State dict of backbone + head and the JSON sidecar describing it."""
        model = self.classifier()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        cfg = self.config
        meta = {
            "classes": list(cfg.classes), "backbone": cfg.model.backbone,
            "image_size": cfg.model.image_size, "mean": list(self.backbone.mean),
            "std": list(self.backbone.std), "temperature": temperature, "round": round_no,
            "mode": self.mode, "head_hidden": list(cfg.train.head_hidden),
            "dropout": cfg.train.dropout, "weights_id": self.backbone.weights_id,
            "feature_scales": self.backbone.scales, "turned_view": self.turned is not None,
            "preprocess": dataclasses.asdict(cfg.preprocess),
            "metrics": metrics,
        }
        return state, meta


def fit_learner(config: Config, snapshot: Snapshot, *, cache_dir: Path, seed: int,
                progress: Progress | None = None, dist: Dist | None = None) -> Learner:
    """Build the backbone, then train the head (head mode), the last stage and a head
    (last-stage mode) or the whole network (finetune). `auto` picks finetune on CUDA, and on a
    CPU last-stage for trained weights it can cut, head mode otherwise (`resolve_mode`).

    Under torchrun (`dist`) every rank calls this. Finetune trains with DDP on every rank. Head
    and last-stage mode share out the extraction of the cached inputs; training (seconds to a
    minute on a CPU) runs on rank 0 alone, and nothing needs it elsewhere, so the other ranks
    return an untrained head.
    """
    cfg = config
    device = resolve_device(cfg.model.device) if dist is None else dist.device
    torch.manual_seed(seed)
    backbone = create_backbone(cfg.model.backbone, pretrained=cfg.model.pretrained,
                               weights=cfg.model.weights, scales=cfg.model.feature_scales)
    trained = bool(cfg.model.weights) or (cfg.model.pretrained and cfg.model.backbone != BASELINE_CNN)
    mode = resolve_mode(cfg.model.mode, device,
                        last_stage_fits=trained and can_split(backbone.module))
    if mode == "last-stage":
        backbone = final_pool_only(backbone)
    stage = split_last_stage(backbone.module, cfg.model.backbone) if mode == "last-stage" else None
    rows, y, w = training_rows(cfg, snapshot)
    holdout = np.flatnonzero(snapshot.mask("holdout"))
    y_all = snapshot.label_index()
    head_kwargs = dict(hidden=cfg.train.head_hidden, dropout=cfg.train.dropout)
    common = dict(epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                  weight_decay=cfg.train.weight_decay, class_balance=cfg.train.class_balance,
                  patience=cfg.train.patience, seed=seed, device=device)
    features = turned = None
    if mode != "finetune":
        samples = [(r.id, r.path) for r in snapshot.rows]
        features = cached_inputs(cfg, backbone, stage, samples, cache_dir=cache_dir, device=device,
                                 dist=dist, progress=progress, verify_ids=True)
        if mode == "last-stage" and cfg.augment.turned_view:
            turned = cached_inputs(cfg, backbone, stage, samples, cache_dir=cache_dir,
                                   device=device, dist=dist, progress=progress, verify_ids=True,
                                   turned=True, step="features, turned")
        fault_point("features-done")
        if dist is not None and not dist.is_main:
            head = MLPHead(backbone.num_features, len(cfg.classes), **head_kwargs)
            return Learner(cfg, backbone, head, mode, device, None, {}, dist, stage)
    if mode == "head":
        results, members = [], []
        for k in range(cfg.train.head_ensemble):
            results.append(train_head(features[rows], y, w, features[holdout], y_all[holdout],
                                      num_classes=len(cfg.classes), lr=cfg.train.lr,
                                      **head_kwargs, **{**common, "seed": seed + k}))
            members.append(MLPHead(backbone.num_features, len(cfg.classes), **head_kwargs))
            members[-1].load_state_dict(results[-1].state)
        head = members[0] if len(members) == 1 else EnsembleHead(members)
    elif mode == "last-stage":
        x = features[rows]
        if turned is not None:  # both views of every training row
            x, y, w = np.concatenate([x, turned[rows]]), np.tile(y, 2), np.tile(w, 2)
        head, result = train_last_stage(
            stage, x, y, w, features[holdout], y_all[holdout],
            num_classes=len(cfg.classes), lr=cfg.train.lr, hflip=cfg.augment.hflip,
            vflip=cfg.augment.vflip, max_epoch_rows=cfg.train.stage_epoch_rows, progress=progress,
            **head_kwargs, **common)
        results = [result]
    else:
        head = MLPHead(backbone.num_features, len(cfg.classes), **head_kwargs)
        classifier = Classifier(backbone.module, head, backbone.scales)
        paths = [r.path for r in snapshot.rows]
        ids = [r.id for r in snapshot.rows]
        result = finetune(
            classifier, [paths[i] for i in rows], y, w, [paths[i] for i in holdout],
            y_all[holdout], image_size=cfg.model.image_size, mean=backbone.mean, std=backbone.std,
            augment=cfg.augment, lr=cfg.train.finetune_lr, num_workers=cfg.train.num_workers, dist=dist,
            max_pixels=cfg.data.max_pixels, progress=progress,
            preprocess=cfg.preprocess, train_ids=[ids[i] for i in rows],
            val_ids=[ids[i] for i in holdout], **common,
        )
        results = [result]
    head.eval()
    # one entry per head of an ensemble; the seconds cover them all
    report = {"best_epoch": [r.best_epoch for r in results],
              "epochs_run": [len(r.history) for r in results],
              "train_rows": int(len(rows)), "seconds": sum(r.seconds for r in results)}
    names = [mode] if len(results) == 1 else [f"head-{k + 1}" for k in range(len(results))]
    history = [{"model": name, "best_epoch": r.best_epoch, "seconds": round(r.seconds, 4),
                "epochs": r.history} for name, r in zip(names, results, strict=True)]
    return Learner(cfg, backbone, head, mode, device, features, report, dist, stage, history,
                   turned)


def cached_inputs(config: Config, backbone: Backbone, stage: LastStage | None,
                  samples: Sequence[tuple[str, str]], *, cache_dir: Path, device: torch.device,
                  dist: Dist | None = None, progress: Progress | None = None, step: str = "features",
                  verify_ids: bool = False, turned: bool = False) -> np.ndarray:
    """[N, D] float32 inputs of `samples` through the feature cache: the pooled features (head
    mode, `stage` None) or the flattened maps before the last stage (last-stage mode; with
    `turned`, those of the images turned 90 degrees); `progress` is reported under `step`;
    `verify_ids` as in `extract_features`."""
    cfg = config
    forward, kind = None, ""
    if stage is not None:
        stage.set_input_size(cfg.model.image_size)
        forward, kind = stage.frozen_maps, "maps-before-last-stage"
        if turned:
            forward, kind = (lambda x: stage.frozen_maps(turn(x))), f"{kind}/turned-90"
    return extract_features(
        backbone, samples, image_size=cfg.model.image_size, cache=FeatureCache(cache_dir / "features"),
        batch_size=cfg.train.batch_size, device=device, dist=dist, num_workers=cfg.train.num_workers,
        max_pixels=cfg.data.max_pixels, progress=progress, step=step, preprocess=cfg.preprocess,
        forward=forward, kind=kind, verify_ids=verify_ids,
    )


def _gather_scores(dist: Dist, logits: np.ndarray, embeddings: np.ndarray, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's shard of (logits, embeddings) on rank 0, in row order."""
    c = logits.shape[1]
    both = np.zeros((n, c + embeddings.shape[1]), np.float32) if dist.is_main else None

    def sink(at: int, rows: np.ndarray) -> None:
        both[at : at + len(rows)] = rows

    gather_rows(dist, np.concatenate([logits, embeddings], axis=1), sink if dist.is_main else None)
    if both is None:
        return logits, embeddings
    return both[:, :c], both[:, c:]


def _empty_scores(learner: Learner) -> Scores:
    """What ranks other than 0 get back from scoring: nothing (rank 0 has every row)."""
    return Scores(np.zeros((0, head_sizes(learner.head)[1]), np.float32),
                  np.zeros((0, learner.backbone.num_features), np.float32))
