"""Classification metrics and calibration (numpy + scikit-learn; no torch). scikit-learn and
scipy are imported by the functions that use them, so `softmax` alone loads neither.

Every function returns plain Python floats, ints and lists so a result can go straight into
`json.dumps` (round reports, checkpoint sidecars). Classes that are absent from `y_true` never
raise or warn: their precision/recall/F1 are 0 (scikit-learn's `zero_division=0`).

Calibration follows Guo et al. 2017 ("On Calibration of Modern Neural Networks"):
`expected_calibration_error` over `calibration_bins` (equal-width confidence bins, the same
ones the report's reliability diagram draws), and `fit_temperature`, which
finds the single T > 0 minimising the negative log-likelihood of `softmax(logits / T)` on a
held-out set. Pseudo-label thresholds act on the calibrated probabilities, so that "0.9"
means about 90 % right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "ECE_BINS",
    "CalibrationBins",
    "calibration_bins",
    "classification_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "softmax",
]

ECE_BINS = 15
MIN_TEMPERATURE_SAMPLES = 10
_T_BOUNDS = (0.05, 20.0)  # search range for the temperature (log-spaced)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    probs: np.ndarray | None,
    classes: Sequence[str],
) -> dict:
    """Accuracy, balanced accuracy, macro/weighted F1, per-class scores, confusion matrix, ECE.

    `y_true`/`y_pred` are class indices into `classes`; `probs` [N, C] (optional) gives the
    ECE and the NLL. Macro and weighted F1 average over the classes seen in `y_true` or
    `y_pred` (scikit-learn's default), balanced accuracy over the classes in `y_true`;
    `per_class` lists every class, with `support` 0 for the absent ones.

    Raises:
        ValueError: empty input, mismatched lengths or an index outside `classes`.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    n_classes = len(classes)
    if len(y_true) == 0:
        raise ValueError("classification_metrics needs at least one sample")
    if len(y_pred) != len(y_true):
        raise ValueError(f"y_true has {len(y_true)} samples but y_pred has {len(y_pred)}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{name} holds indices outside 0..{n_classes - 1} ({n_classes} classes)")
    # imported here: `sslall predict` needs only `softmax`, and scikit-learn takes ~1 s to import
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    all_labels = list(range(n_classes))
    cm = confusion_matrix(y_true, y_pred, labels=all_labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0
    )
    total = int(cm.sum())
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    seen = np.union1d(y_true, y_pred)
    present = np.unique(y_true)
    weights = support[seen] / support[seen].sum() if support[seen].sum() else np.zeros(len(seen))
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "specificity": _ratio(tn[i], tn[i] + fp[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    result: dict = {
        "n": total,
        "accuracy": float(tp.sum() / total),
        "balanced_accuracy": float(np.mean(recall[present])),
        "macro_f1": float(np.mean(f1[seen])),
        "weighted_f1": float(np.sum(f1[seen] * weights)),
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "ece": None,
        "nll": None,
    }
    if probs is not None:
        probs = _check_probs(probs, len(y_true), n_classes)
        result["ece"] = expected_calibration_error(probs, y_true)
        picked = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
        result["nll"] = float(-np.mean(np.log(picked)))
    return result


class CalibrationBins(NamedTuple):
    """Per equal-width confidence bin b, covering (edges[b], edges[b + 1]]: how many samples,
    the sum of their confidences and how many of them are right (float arrays, [n_bins])."""

    edges: np.ndarray
    count: np.ndarray
    confidence_sum: np.ndarray
    correct_sum: np.ndarray


def calibration_bins(
    probs: np.ndarray, y_true: Sequence[int] | np.ndarray, n_bins: int = ECE_BINS
) -> CalibrationBins:
    """Bin the samples by confidence (the top probability), the one binning of ECE and report.

    Bin b holds confidences in (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 falls in
    the first bin.

    Raises:
        ValueError: `n_bins` < 1, or `probs` is not [len(y_true), C].
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    probs = _check_probs(probs, len(y_true), None)
    confidence = probs.max(axis=1) if len(y_true) else np.zeros(0)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64) if len(y_true) else np.zeros(0)
    which = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return CalibrationBins(
        edges=np.linspace(0.0, 1.0, n_bins + 1),
        count=np.bincount(which, minlength=n_bins).astype(np.float64),
        confidence_sum=np.bincount(which, weights=confidence, minlength=n_bins),
        correct_sum=np.bincount(which, weights=correct, minlength=n_bins),
    )


def expected_calibration_error(
    probs: np.ndarray, y_true: Sequence[int] | np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: the sample-weighted mean |accuracy - confidence| over `calibration_bins`.

    Returns 0.0 for no samples.

    Raises:
        ValueError: `n_bins` < 1, or `probs` is not [len(y_true), C].
    """
    bins = calibration_bins(probs, y_true, n_bins)
    n = float(bins.count.sum())
    return float(np.sum(np.abs(bins.correct_sum - bins.confidence_sum)) / n) if n else 0.0


def fit_temperature(logits: np.ndarray, y_true: Sequence[int] | np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out labels.

    A bounded 1-D search over log T in [log 0.05, log 20] (scipy, float64), deterministic.
    Returns 1.0 (no rescaling) when T cannot be estimated: fewer than 10 samples, non-finite or
    constant logits, or a holdout the model already gets entirely right (its NLL then keeps
    falling as T -> 0, and sharpening every probability to 1 on that evidence would be reckless).
    """
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(y_true):
        raise ValueError(f"logits must be [N, C] with N = {len(y_true)}, got shape {logits.shape}")
    n = len(y_true)
    if (
        n < MIN_TEMPERATURE_SAMPLES
        or logits.shape[1] < 2
        or not np.isfinite(logits).all()
        or np.ptp(logits, axis=1).max() == 0.0
        or bool(np.all(logits.argmax(axis=1) == y_true))
    ):
        return 1.0
    if y_true.min() < 0 or y_true.max() >= logits.shape[1]:
        raise ValueError(f"y_true holds indices outside 0..{logits.shape[1] - 1}")
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    rows = np.arange(n)

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / math.exp(log_t), axis=1)[rows, y_true]))

    lo, hi = (math.log(b) for b in _T_BOUNDS)
    found = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    log_t = float(found.x) if found.success else 0.0
    return float(math.exp(log_t)) if nll(log_t) <= nll(0.0) else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / temperature) as float32, computed stably in float64."""
    if not temperature > 0.0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def _check_probs(probs: np.ndarray, n: int, n_classes: int | None) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != n or (n_classes is not None and probs.shape[1] != n_classes):
        want = f"[{n}, {n_classes if n_classes is not None else 'C'}]"
        raise ValueError(f"probs must have shape {want}, got {probs.shape}")
    return probs
