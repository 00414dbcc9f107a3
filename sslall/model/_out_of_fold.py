"""Out-of-sample probabilities of the human labels, for confident learning
(`sslall.decide._label_issues`).

The round's model trained on the labeled pool, so its probabilities there are in-sample: it has
learnt each label, mistakes included. Here the labeled pool is split into `folds` class-stratified
folds; for each, one MLP head trains on the round's training rows (labeled ∪ pseudo) minus that
fold and scores it. The heads train on the round's embeddings (in head mode the cached backbone
features, so nothing of the held-out labels leaks; in last-stage and finetune mode the trained
backbone saw them, a weaker guarantee), for as many epochs as the round's median head needed and
without a validation pass, which keeps the cost to a fraction of the round's training. The
holdout is never trained on: its calibrated probabilities are out-of-sample already. All
probabilities use the round's calibration temperature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from sslall.config import Config
from sslall.decide._metrics import softmax
from sslall.model._heads import MLPHead, head_logits
from sslall.model._learner import training_rows
from sslall.model._train import train_head

if TYPE_CHECKING:
    from sslall.store._snapshot import Snapshot

__all__ = ["human_label_probs", "stratified_folds"]


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..folds-1) of each row, each class dealt round-robin after a seeded shuffle,
    so every fold holds about the same share of every class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        out[members] = (start + np.arange(len(members))) % folds
        start += len(members)  # the next class starts where this one stopped: folds stay even
    return out


def human_label_probs(config: Config, snapshot: Snapshot, embeddings: np.ndarray,
                      probs: np.ndarray, *, temperature: float, epochs: int, folds: int,
                      seed: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(rows, out-of-sample probabilities) of every labeled and holdout row (module docstring).

    `probs` are the round's calibrated probabilities (the holdout's are taken as they are);
    `epochs` the epochs each fold's head trains. Fewer than two labeled rows: they keep the
    round's probabilities (there is no fold to hold out).
    """
    cfg = config.train
    labeled = np.flatnonzero(snapshot.mask("labeled"))
    holdout = np.flatnonzero(snapshot.mask("holdout"))
    out = probs[labeled].astype(np.float64)
    folds = min(folds, len(labeled))
    if folds >= 2:
        train_idx, train_y, train_w = training_rows(config, snapshot)
        fold_of = np.full(len(snapshot.rows), -1, dtype=np.int64)
        fold_of[labeled] = stratified_folds(snapshot.label_index()[labeled], folds, seed)
        num_classes = len(snapshot.classes)
        for k in range(folds):
            keep = fold_of[train_idx] != k
            if not train_w[keep].any():
                continue
            result = train_head(embeddings[train_idx[keep]], train_y[keep], train_w[keep],
                                num_classes=num_classes, hidden=cfg.head_hidden,
                                dropout=cfg.dropout, epochs=max(1, epochs),
                                batch_size=cfg.batch_size, lr=cfg.lr,
                                weight_decay=cfg.weight_decay, class_balance=cfg.class_balance,
                                seed=seed + k, device=device)
            head = MLPHead(embeddings.shape[1], num_classes, hidden=cfg.head_hidden,
                           dropout=cfg.dropout)
            head.load_state_dict(result.state)
            scored = fold_of[labeled] == k
            logits = head_logits(head, embeddings[labeled[scored]], device, cfg.batch_size * 8)
            out[scored] = softmax(logits, temperature)
    return np.concatenate([labeled, holdout]), np.concatenate([out, probs[holdout]])
