"""What a round records for `sslall report` beyond metrics.json and predictions.csv.

Three small files in `runs/round-NNNN/`, written with the rest of the round's folder:

    reliability.json   the holdout's reliability diagram before calibration (T = 1) and after
                       (the fitted temperature): per confidence bin, its count, mean confidence
                       and accuracy
    embeddings.npz     `rows`: indices into predictions.csv's rows (up to 20,000, a seeded
                       sample when there are more) and `pca`: their embeddings reduced to 32
                       principal components (float16), enough for the report's PCA and t-SNE
                       maps without keeping the full [N, D] embeddings
    history.json       the training curves: {"round", "mode", "models": [{"model", "best_epoch",
                       "seconds", "epochs": [{"epoch", "train_loss", "val_macro_f1", "val_loss",
                       "lr", "seconds"}, ...]}, ...]}, one model per ensemble head (head-1,
                       head-2, ...), or the last stage or finetuned network; the holdout scores
                       are null without a holdout

The uncalibrated probabilities are recovered from the calibrated ones exactly: p = softmax(z/T),
so softmax(T log p) = softmax(z).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sslall._fsutil import write_atomic
from sslall.decide._metrics import ECE_BINS, calibration_bins

if TYPE_CHECKING:
    from sslall.store._snapshot import Snapshot

__all__ = ["HISTORY_FILE", "MAX_POINTS", "principal_components", "read_embeddings", "read_history",
           "read_reliability", "reliability_bins", "write_history", "write_report_data"]

HISTORY_FILE = "history.json"
MAX_POINTS = 20_000
PCA_COMPONENTS = 32


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin of the ECE (`calibration_bins`): lo, hi, count, mean confidence,
    accuracy (None if empty), so the diagram shows the bins metrics.json's ECE sums over."""
    cal = calibration_bins(probs, y, bins)
    out = []
    for b in range(bins):
        n = int(cal.count[b])
        out.append({"lo": float(cal.edges[b]), "hi": float(cal.edges[b + 1]), "count": n,
                    "confidence": float(cal.confidence_sum[b] / n) if n else None,
                    "accuracy": float(cal.correct_sum[b] / n) if n else None})
    return out


def write_report_data(folder: Path, snapshot: Snapshot, probs: np.ndarray, temperature: float,
                      embeddings: np.ndarray | None, *, seed: int = 0) -> None:
    """Write reliability.json and embeddings.npz into a round's (temporary) folder."""
    holdout = snapshot.mask("holdout")
    y = snapshot.label_index()[holdout]
    data: dict = {"temperature": float(temperature), "holdout": int(holdout.sum())}
    if holdout.any() and (y >= 0).all():
        calibrated = np.asarray(probs[holdout], dtype=np.float64)
        logp = np.log(np.clip(calibrated, 1e-12, 1.0)) * float(temperature)
        raw = np.exp(logp - logp.max(axis=1, keepdims=True))
        raw /= raw.sum(axis=1, keepdims=True)
        data |= {"before": reliability_bins(raw, y), "after": reliability_bins(calibrated, y)}
    write_atomic(folder / "reliability.json", json.dumps(data, indent=2).encode())
    if embeddings is None or len(embeddings) < 3:
        return
    n = len(embeddings)
    rows = np.arange(n)
    if n > MAX_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))
    x = np.asarray(embeddings[rows], dtype=np.float32)
    pca, variance = principal_components(x, int(min(PCA_COMPONENTS, x.shape[1], len(x) - 1)))
    buf = io.BytesIO()
    np.savez_compressed(buf, rows=rows.astype(np.int32), pca=pca.astype(np.float16),
                        variance=variance.astype(np.float32))
    write_atomic(folder / "embeddings.npz", buf.getvalue())


def principal_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `x` [n, D] on their first `k` principal components ([n, k], largest variance
    first) and each component's share of the total variance ([k]).

    scikit-learn's randomized PCA with a fixed seed: the same numbers on every run, and an
    order of magnitude faster than a full SVD of a round's (up to 20,000 x D) sample.
    """
    from sklearn.decomposition import PCA

    total = float(np.var(x, axis=0, ddof=1, dtype=np.float64).sum()) if len(x) > 1 else 0.0
    if total <= 0.0:  # all rows equal: no direction has any variance
        return np.zeros((len(x), k), dtype=x.dtype), np.zeros(k)
    pca = PCA(n_components=k, svd_solver="randomized", random_state=0)
    return pca.fit_transform(x), pca.explained_variance_ / total


def write_history(folder: Path, round_no: int, mode: str, models: list[dict]) -> None:
    """Write history.json (`Learner.history` of the round) into a round's (temporary) folder."""
    data = {"round": int(round_no), "mode": mode, "models": models}
    write_atomic(folder / HISTORY_FILE, json.dumps(data, indent=1).encode())


def read_history(run_dir: Path) -> dict | None:
    """history.json of a round, or None (rounds from before it was recorded)."""
    path = run_dir / HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_reliability(run_dir: Path) -> dict | None:
    """reliability.json of a round, or None (rounds from before it was recorded)."""
    path = run_dir / "reliability.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_embeddings(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(rows, pca [n, k] float32, explained variance ratios) of a round, or None."""
    path = run_dir / "embeddings.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["rows"], z["pca"].astype(np.float32), z["variance"]
