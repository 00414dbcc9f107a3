"""Deciding a round's moves from calibrated probabilities: pseudo labels and routing.

`decide_pseudo_labels`: unlabeled and pseudo rows compete for pseudo labels under the policy's
class-wise thresholds, the optional class cap and the kNN-agreement filter; a pseudo label that
no longer passes goes back to unlabeled (self-correction). Human labels are never candidates.
With the `propagation` policy the thresholds act on each cell's propagated class distribution
(`sslall.decide._propagation`, on the trained head's hidden features, seeded by the human
labels) instead of the classifier's, a cell must also be the classifier's class, the graph
replaces the kNN filter, and each pseudo label weighs its propagation certainty in training.

`decide_routing`: low-confidence human-labelled rows are up-weighted for the next training
(route `retrain`/`both`); unlabeled rows that did not become pseudo labels are review
candidates, ranked by the acquisition strategy with batch diversity among the top of the
ranking. Review is for doubt: a candidate whose calibrated confidence passes its class's
pseudo-label threshold (one the kNN or class-cap filter held back) is ranked after every
candidate below it, so it is sent only when no doubtful one is left; a candidate whose
uncertainty (1 - calibrated confidence) is under `route.min_uncertainty` is not a candidate;
and a round sends at most ``min(route.budget, route.max_review - outstanding)`` cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sslall.config import Config
from sslall.decide._acquisition import acquire_scored
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
    # sample id -> training weight factor of a pseudo label (propagation certainty); {} = none
    # bool per snapshot row: an unlabeled or pseudo row whose calibrated confidence passes its
    # class's threshold (selected or held back by the kNN or class-cap filter); None = none
    confident: np.ndarray | None = None
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Routing:
    """Review moves and next-round sample weights."""

    moves: list[Move]
    weights: dict[str, float]
    review_rows: np.ndarray


def decide_pseudo_labels(config: Config, snapshot: Snapshot, probs: np.ndarray,
                         embeddings: np.ndarray, hidden: np.ndarray | None = None
                         ) -> PseudoDecision:
    """The round's pseudo-label moves (module docstring); `hidden` [N, H] are the trained head's
    hidden features, needed by the `propagation` policy.

    Raises:
        ValueError: the `propagation` policy without `hidden`.
    """
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
    basis, weight = probs, None  # what the thresholds act on; the pseudo labels' weights
    if cfg.policy == "propagation" and len(candidates):
        basis, weight = _propagated(config, snapshot, probs, hidden)
    thresholds = (class_thresholds(cfg.policy, basis[candidates], threshold=cfg.threshold,
                                   labeled_counts=labeled_counts, **options)
                  if len(candidates) else np.full(len(classes), cfg.threshold))
    if len(candidates):
        confident = basis[candidates].max(1) >= thresholds[basis[candidates].argmax(1)]
        caps = (class_caps_from_prior(labeled_counts, basis[candidates], thresholds)
                if cfg.class_cap else None)
        keep = select_pseudo_labels(basis[candidates], thresholds, class_cap=caps)
        if cfg.policy == "propagation":
            keep &= basis[candidates].argmax(1) == probs[candidates].argmax(1)
        elif cfg.knn_agreement > 0 and keep.any():
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
                passed = (f"p={conf:.3f} >= {thresholds[pred]:.3f}" if basis is probs else
                          f"propagated {basis[i, pred]:.3f} >= {thresholds[pred]:.3f}, p={conf:.3f}")
                reason = (passed if row.pool == "unlabeled"
                          else f"relabelled {row.label}->{classes[pred]}, p={conf:.3f}")
                moves.append(Move(row.id, "pseudo", from_pool=row.pool, label=classes[pred],
                                  label_source="pseudo", confidence=conf, prediction=classes[pred],
                                  reason=reason))
        elif row.pool == "pseudo":
            why = (("propagation, classifier or class cap disagreed" if basis is not probs
                    else "kNN neighbours or class cap disagreed") if confident[j]
                   else f"p={basis[i].max():.3f} fell below {thresholds[basis[i].argmax()]:.3f}")
            moves.append(Move(row.id, "unlabeled", from_pool="pseudo", confidence=conf,
                              prediction=classes[pred], reason=f"self-correction: {why}"))
    per_class = {c: int(((probs[selected].argmax(1) == k)).sum()) for k, c in enumerate(classes)}
    sure = np.zeros(len(snapshot.rows), dtype=bool)
    sure[candidates[confident]] = True
    return PseudoDecision(moves, selected,
                          {c: round(float(t), 4) for c, t in zip(classes, thresholds, strict=True)},
                          per_class, sure,
                          {} if weight is None else {snapshot.rows[i].id: round(float(weight[i]), 6)
                                                     for i in np.flatnonzero(selected)})


def _propagated(config: Config, snapshot: Snapshot, probs: np.ndarray, hidden: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(propagated class distributions [N, C], certainty weights [N]) seeded by the labeled pool."""
    from sslall.decide._propagation import PropagationParams, certainty, propagate_labels

    if hidden is None or len(hidden) != len(probs):
        raise ValueError("the propagation policy needs the trained head's hidden features of "
                         "every row")
    seeds = np.flatnonzero(snapshot.mask("labeled"))
    z = propagate_labels(hidden, seeds, snapshot.label_index()[seeds], probs.shape[1],
                         PropagationParams(k=config.pseudo.propagation_k),
                         approx_above=config.index.approx_above, approx=config.index.approx)
    return z, certainty(z)


def decide_routing(config: Config, snapshot: Snapshot, probs: np.ndarray, scores: Scores,
                   pseudo: PseudoDecision, *, rng: np.random.Generator) -> Routing:
    """Next-round sample weights (the pseudo labels' own, and up-weights for unsure human
    labels) and the round's review moves (module docstring).

    Each review move's reason states the strategy's score of the cell and its rank among the
    candidates, e.g. ``margin 0.04, rank 3 of 120 candidates``.
    """
    classes = snapshot.classes
    labels = snapshot.label_index()
    human = np.flatnonzero(snapshot.human_mask())
    weights: dict[str, float] = dict(pseudo.weights)  # pseudo labels' weights, then hard examples
    if config.route.route in ("retrain", "both") and len(human):
        own = probs[human, labels[human]]
        for i in human[own < config.route.hard_threshold]:
            weights[snapshot.rows[i].id] = config.train.hard_weight
    pool = np.flatnonzero(snapshot.mask("unlabeled", "pseudo") & ~pseudo.selected)
    pool = pool[1.0 - probs[pool].max(1) >= config.route.min_uncertainty]
    outstanding = int(snapshot.mask("review").sum())
    room = max(0, min(config.route.budget, config.route.max_review - outstanding, len(pool)))
    sure = (np.zeros(len(pool), dtype=bool) if pseudo.confident is None
            else pseudo.confident[pool])
    known = np.flatnonzero(snapshot.human_mask() | pseudo.selected | snapshot.mask("review"))
    review_rows, reasons = np.zeros(0, dtype=np.int64), []
    for tier, kind in ((pool[~sure], ""), (pool[sure], "confident ")):  # doubtful ones first
        want = room - len(review_rows)
        if want <= 0 or not len(tier):
            continue
        picked, tier_scores = acquire_scored(
            probs[tier], want, strategy=config.route.strategy, embeddings=scores.embeddings[tier],
            labeled_embeddings=scores.embeddings[np.concatenate([known, review_rows])],
            mc_probs=None if scores.mc_probs is None else scores.mc_probs[:, tier],
            diversity=config.route.diversity, rng=rng,
            candidate_factor=config.route.candidate_factor, approx_above=config.index.approx_above)
        for n, k in enumerate(picked):
            if tier_scores is None:  # a batch strategy: no score per cell, only the order picked
                why = f"{config.route.strategy}: pick {n + 1} of {len(picked)} among"
            else:
                why = (f"{_score_text(config.route.strategy, tier_scores[k])}, rank "
                       f"{1 + int((tier_scores > tier_scores[k]).sum())} of")
            reasons.append(f"{why} {len(tier)} {kind}candidates")
            if kind:
                pred = int(probs[tier[k]].argmax())
                reasons[-1] += (f" (p={probs[tier[k], pred]:.3f} passes its class threshold "
                                f"{pseudo.thresholds[classes[pred]]}; no doubtful candidate left)")
        review_rows = np.concatenate([review_rows, tier[picked]])
    moves = []
    for i, reason in zip(review_rows, reasons, strict=True):
        row = snapshot.rows[i]
        pred = int(probs[i].argmax())
        moves.append(Move(row.id, "review", from_pool=row.pool, confidence=float(probs[i, pred]),
                          prediction=classes[pred], reason=reason))
    return Routing(moves, weights, review_rows)


def _score_text(strategy: str, score: float) -> str:
    """A cell's acquisition score as a lab reads it: margin as the gap p1 - p2, not its negation."""
    value = -score if strategy == "margin" else score
    return f"{strategy} {value:.3g}"
