"""Deciding a round's moves from calibrated probabilities: pseudo labels and routing.

`decide_pseudo_labels`: unlabeled and pseudo rows compete for pseudo labels under the policy's
class-wise thresholds, the optional class cap and the kNN-agreement filter; a pseudo label that
no longer passes goes back to unlabeled (self-correction). Human labels are never candidates.

`decide_routing`: low-confidence human-labelled rows are up-weighted for the next training
(route `retrain`/`both`); unlabeled rows that did not become pseudo labels are ranked by the
acquisition strategy with batch diversity, and the top `budget` move to `review`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sslall.config import Config
from sslall.decide._acquisition import acquire
from sslall.decide._index import knn_agreement
from sslall.decide._policies import class_caps_from_prior, class_thresholds, select_pseudo_labels
from sslall.store._records import Move

if TYPE_CHECKING:
    from sslall.decide._scores import Scores
    from sslall.store._snapshot import Snapshot


@dataclass
class PseudoDecision:
    """The pseudo-label moves of a round and what decided them."""

    moves: list[Move]
    selected: np.ndarray  # bool per snapshot row: holds a pseudo label after the round
    thresholds: dict[str, float]
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class Routing:
    """Review moves and next-round sample weights."""

    moves: list[Move]
    weights: dict[str, float]
    review_rows: np.ndarray


def decide_pseudo_labels(config: Config, snapshot: Snapshot, probs: np.ndarray,
                         embeddings: np.ndarray) -> PseudoDecision:
    classes = snapshot.classes
    labels = snapshot.label_index()
    human = snapshot.human_mask()
    candidates = np.flatnonzero(snapshot.mask("unlabeled", "pseudo"))
    selected = np.zeros(len(snapshot.rows), dtype=bool)
    labeled_counts = np.bincount(labels[human], minlength=len(classes))
    cfg = config.pseudo
    # Pseudo labels persist across rounds here, so FlexMatch's warm-up (which keeps every class
    # at the floor while few predictions are confident) would be too permissive.
    options = {"warmup": False} if cfg.policy == "adaptive" else {}
    thresholds = (class_thresholds(cfg.policy, probs[candidates], threshold=cfg.threshold,
                                   labeled_counts=labeled_counts, **options)
                  if len(candidates) else np.full(len(classes), cfg.threshold))
    if len(candidates):
        confident = probs[candidates].max(1) >= thresholds[probs[candidates].argmax(1)]
        caps = (class_caps_from_prior(labeled_counts, probs[candidates], thresholds)
                if cfg.class_cap else None)
        keep = select_pseudo_labels(probs[candidates], thresholds, class_cap=caps)
        if cfg.knn_agreement > 0 and keep.any():
            agree = knn_agreement(embeddings[human], labels[human], embeddings[candidates[keep]],
                                  probs[candidates[keep]].argmax(1), k=cfg.knn_k,
                                  min_fraction=cfg.knn_agreement,
                                  approx_above=config.index.approx_above, approx=config.index.approx)
            keep[np.flatnonzero(keep)[~agree]] = False
        selected[candidates[keep]] = True
    else:
        confident = np.zeros(0, dtype=bool)
    moves = []
    for j, i in enumerate(candidates):
        row = snapshot.rows[i]
        pred = int(probs[i].argmax())
        conf = float(probs[i, pred])
        if selected[i]:
            if row.pool == "unlabeled" or row.label != classes[pred]:
                reason = (f"p={conf:.3f} >= {thresholds[pred]:.3f}" if row.pool == "unlabeled"
                          else f"relabelled {row.label}->{classes[pred]}, p={conf:.3f}")
                moves.append(Move(row.id, "pseudo", from_pool=row.pool, label=classes[pred],
                                  label_source="pseudo", confidence=conf, prediction=classes[pred],
                                  reason=reason))
        elif row.pool == "pseudo":
            why = ("kNN neighbours or class cap disagreed" if confident[j]
                   else f"p={conf:.3f} fell below {thresholds[pred]:.3f}")
            moves.append(Move(row.id, "unlabeled", from_pool="pseudo", confidence=conf,
                              prediction=classes[pred], reason=f"self-correction: {why}"))
    per_class = {c: int(((probs[selected].argmax(1) == k)).sum()) for k, c in enumerate(classes)}
    return PseudoDecision(moves, selected,
                          {c: round(float(t), 4) for c, t in zip(classes, thresholds, strict=True)},
                          per_class)


def decide_routing(config: Config, snapshot: Snapshot, probs: np.ndarray, scores: Scores,
                   pseudo: PseudoDecision, *, rng: np.random.Generator) -> Routing:
    classes = snapshot.classes
    labels = snapshot.label_index()
    human = np.flatnonzero(snapshot.human_mask())
    weights: dict[str, float] = {}
    if config.route.route in ("retrain", "both") and len(human):
        own = probs[human, labels[human]]
        for i in human[own < config.route.hard_threshold]:
            weights[snapshot.rows[i].id] = config.train.hard_weight
    pool = np.flatnonzero(snapshot.mask("unlabeled", "pseudo") & ~pseudo.selected)
    review_rows = np.zeros(0, dtype=np.int64)
    budget = min(config.route.budget, len(pool))
    if budget > 0:
        known = np.flatnonzero(snapshot.human_mask() | pseudo.selected | snapshot.mask("review"))
        review_rows = pool[acquire(
            probs[pool], budget, strategy=config.route.strategy,
            embeddings=scores.embeddings[pool], labeled_embeddings=scores.embeddings[known],
            mc_probs=None if scores.mc_probs is None else scores.mc_probs[:, pool],
            diversity=config.route.diversity, rng=rng, approx_above=config.index.approx_above,
        )]
    moves = []
    for i in review_rows:
        row = snapshot.rows[i]
        pred = int(probs[i].argmax())
        moves.append(Move(row.id, "review", from_pool=row.pool, confidence=float(probs[i, pred]),
                          prediction=classes[pred],
                          reason=f"{config.route.strategy}: among the least certain"))
    return Routing(moves, weights, review_rows)
