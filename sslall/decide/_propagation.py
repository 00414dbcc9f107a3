"""Label propagation on a kNN graph of embeddings the labels have shaped (numpy, scipy, faiss).

Iscen et al., CVPR 2019, "Label Propagation for Deep Semi-supervised Learning": the graph is
rebuilt every round on the trained network's own features (here the head's last hidden layer),
so it follows the representation as the labels reshape it. On the raw frozen ImageNet features
the same propagation labels cells worse than a classifier does (issue 16's measurement), which
is why the caller passes the head's features, never the backbone's.

    A_ij = max(0, cos(v_i, v_j))^gamma   for j among the k nearest neighbours of i
    W = A + A^T,   W_n = D^-1/2 W D^-1/2
    (I - alpha W_n) Z = Y   (conjugate gradient, one column per class)
    Y_ic = 1 / |L_c| for a labelled cell i of class c (class-balanced), else 0

The rows of Z, normalised to sum 1, are each cell's propagated class distribution;
`certainty` = 1 - H(z) / log C is Iscen's per-cell weight (1: all mass on one class).
"""

from __future__ import annotations

import numpy as np

from sslall.decide._index import APPROX_ABOVE, knn

__all__ = ["PropagationParams", "certainty", "propagate_labels"]


class PropagationParams:
    """Graph and solver settings; the defaults are the paper's (k 50, gamma 3, alpha 0.99)."""

    def __init__(self, k: int = 50, gamma: float = 3.0, alpha: float = 0.99,
                 max_iter: int = 20) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1); got {alpha}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0; got {gamma}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1; got {max_iter}")
        self.k, self.gamma, self.alpha, self.max_iter = int(k), float(gamma), float(alpha), int(max_iter)


def propagate_labels(embeddings: np.ndarray, labeled: np.ndarray, labels: np.ndarray,
                     num_classes: int, params: PropagationParams | None = None, *,
                     approx_above: int = APPROX_ABOVE, approx: str = "auto") -> np.ndarray:
    """Each row's propagated class distribution [N, C] (rows sum to 1; see the module docstring).

    Args:
        embeddings: [N, D] features of every cell (labelled and not).
        labeled: indices of the labelled rows, the graph's seeds.
        labels: their class indices, in 0..num_classes-1.
        num_classes: C.
        params: graph and solver settings.
        approx_above, approx: as in `sslall.decide._index.knn`.

    A row the propagation cannot reach (no path to any seed) gets the uniform distribution,
    so its certainty is 0. Seeds keep their own propagated scores (not forced to their label).

    Raises:
        ValueError: shapes disagree, a label is out of range, or there is no seed.
    """
    from scipy import sparse
    from scipy.sparse.linalg import cg

    p = params or PropagationParams()
    x = np.asarray(embeddings, dtype=np.float32)
    labeled = np.asarray(labeled, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D]; got shape {x.shape}")
    n = x.shape[0]
    if len(labeled) != len(labels):
        raise ValueError(f"labeled ({len(labeled)}) and labels ({len(labels)}) differ in length")
    if not len(labeled):
        raise ValueError("label propagation needs at least one labelled row")
    if labeled.min() < 0 or labeled.max() >= n:
        raise ValueError(f"labeled indices must be in [0, {n}); got {labeled.min()}..{labeled.max()}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    if n == 1:
        out = np.zeros((1, num_classes))
        out[0, labels[0]] = 1.0
        return out
    sims, idx = knn(x, x, p.k, exclude_self=True, approx_above=approx_above, approx=approx)
    k = idx.shape[1]
    ok = idx >= 0
    weights = np.where(ok, np.clip(sims, 0.0, None) ** p.gamma, 0.0).astype(np.float64)
    rows = np.repeat(np.arange(n), k)
    a = sparse.csr_matrix((weights.ravel(), (rows, np.where(ok, idx, 0).ravel())), shape=(n, n))
    w = a + a.T
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.zeros(n)
    inv_sqrt[degree > 0] = 1.0 / np.sqrt(degree[degree > 0])
    d = sparse.diags(inv_sqrt)
    system = sparse.identity(n, format="csr") - p.alpha * (d @ w @ d)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    z = np.zeros((n, num_classes))
    for c in range(num_classes):
        if counts[c] == 0:
            continue
        y = np.zeros(n)
        y[labeled[labels == c]] = 1.0 / counts[c]
        z[:, c], _ = cg(system, y, maxiter=p.max_iter, rtol=1e-6)
    z = np.clip(z, 0.0, None)
    total = z.sum(axis=1, keepdims=True)
    unreached = total[:, 0] <= 0
    z[~unreached] /= total[~unreached]
    z[unreached] = 1.0 / num_classes
    return z


def certainty(distribution: np.ndarray) -> np.ndarray:
    """Per-row weight 1 - H(z) / log C in [0, 1] of row-stochastic ``distribution`` [N, C]."""
    z = np.asarray(distribution, dtype=np.float64)
    c = z.shape[1]
    if c < 2:
        return np.ones(len(z))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(z > 0, z * np.log(z), 0.0).sum(axis=1)
    return np.clip(1.0 - h / np.log(c), 0.0, 1.0)
