"""Nearest neighbours, k-means, k-center and near-duplicates over embeddings, with faiss.

Everything here works on cosine geometry: inputs are copied to float32 and L2-normalised per row
(a zero row stays zero), so inner product is cosine similarity and, on the unit sphere, squared
Euclidean distance is ``2 - 2 * cos``. Inputs are never modified.

Search uses an exact `IndexFlatIP` by default. When the reference set has more than
``approx_above`` rows (config `index.approx_above`) an approximate index is built instead:
IVF by default (`index.approx = "auto"`), HNSW on request. Both store the vectors as float16
(faiss's scalar quantizer), half of float32, and the reference is normalised and added in
batches, so no float32 copy of it is made: 10^6 x 512 embeddings take ~1 GiB in the index.
IVF rather than HNSW by default because a round builds its index once and queries it once: on
the 2-core reference machine IVF built and searched 10^5 x 320 clustered embeddings several
times faster than HNSW, at the same recall (BENCHMARKS.md, "kNN at scale"). When
``faiss.get_num_gpus() > 0`` (extra `sslall[gpu]`) the index is moved to the GPU (HNSW stays
on the CPU: faiss has no GPU HNSW). Queries are searched in batches so result memory stays
bounded.

No torch here: this module is numpy + faiss only.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

APPROX_ABOVE = 200_000
BATCH_SIZE = 65_536
_GPU_MAX_K = 2048  # faiss GPU k-selection limit; larger k falls back to the CPU
_APPROX_METHODS = ("auto", "hnsw", "ivf")
_TRAIN_PER_LIST = 64  # IVF k-means trains on at most this many sampled rows per list


def l2_normalize(x: np.ndarray, name: str = "x") -> np.ndarray:
    """A validated, C-contiguous float32 copy of ``x`` [N, D] with unit rows (zero rows stay 0)."""
    arr = np.array(x, dtype=np.float32, copy=True, order="C")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, dim]; got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))[:, None]  # no [N, D] temporary, unlike norm()
    np.divide(arr, norms, out=arr, where=norms > 0)
    return arr


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as an array (no copy of an array or a memory map) after a shape check."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array [rows, dim] with at least one column; "
                         f"got shape {arr.shape}")
    return arr


def _check_dims(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same dimension; "
            f"got {a.shape[1]} and {b.shape[1]}"
        )


def _use_gpu(k: int) -> bool:
    return faiss.get_num_gpus() > 0 and k <= _GPU_MAX_K


def ivf_lists(n: int) -> tuple[int, int]:
    """(nlist, nprobe) of the IVF index over n rows: about sqrt(n) lists, 1/16 of them probed
    (at least 8): enough on clustered embeddings (the benchmark measures the recall)."""
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    return nlist, max(1, min(nlist, max(8, nlist // 16), _GPU_MAX_K))


def _build_index(reference: np.ndarray, *, method: str, gpu: bool, k: int, batch_size: int) -> tuple:
    """(index, keep-alive) over the unit rows of ``reference``; ``method``: exact, hnsw or ivf.

    Every index takes the reference a batch at a time; the approximate ones store float16."""
    n, d = reference.shape
    if method == "exact":
        index = faiss.IndexFlatIP(d)
        _add_batches(index, reference, batch_size)
    elif method == "hnsw":
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        _add_batches(index, reference, batch_size)
        index.hnsw.efSearch = max(128, 2 * k)
        return index, None  # no GPU HNSW in faiss
    else:
        nlist, nprobe = ivf_lists(n)
        index = faiss.index_factory(d, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index).cp.niter = 10  # k-means of the lists: 10 rounds suffice
        sample = np.random.default_rng(0).choice(n, min(n, _TRAIN_PER_LIST * nlist), replace=False)
        index.train(l2_normalize(reference[np.sort(sample)], "reference"))
        _add_batches(index, reference, batch_size)
        index.nprobe = nprobe
    if gpu:
        res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(res, 0, index), res
    return index, None


def _add_batches(index: faiss.Index, reference: np.ndarray, batch_size: int) -> None:
    for start in range(0, len(reference), batch_size):
        index.add(l2_normalize(reference[start : start + batch_size], "reference"))


def knn(
    reference: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    approx_above: int = APPROX_ABOVE,
    approx: str = "auto",
    batch_size: int = BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar reference rows for each query row.

    Args:
        reference: [N, D] embeddings to search in.
        queries: [Q, D] embeddings to search for.
        k: neighbours per query; clipped to N (to N - 1 with ``exclude_self``).
        exclude_self: queries are the reference rows themselves (Q == N); drop row i from the
            neighbours of query i, so a point is not its own neighbour.
        approx_above: build an approximate index when N exceeds this (exact below).
        approx: "auto" (IVF), "ivf" or "hnsw"; both store float16.
        batch_size: queries searched per faiss call, bounding memory.

    Returns:
        (similarities [Q, k'] float32, indices [Q, k'] int64), best first; k' is the clipped k.
        An empty reference gives arrays of shape [Q, 0]. As in faiss, an approximate index may
        (rarely) leave a slot unfilled: index -1, similarity -3.4e38.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if approx not in _APPROX_METHODS:
        raise ValueError(f"approx must be one of {', '.join(_APPROX_METHODS)}; got {approx!r}")
    reference, queries = _as_2d(reference, "reference"), _as_2d(queries, "queries")
    _check_dims(reference, queries, "reference", "queries")
    n, nq = reference.shape[0], queries.shape[0]
    if exclude_self and nq != n:
        raise ValueError(f"exclude_self needs queries == reference rows; got {nq} and {n}")
    k_out = min(k, n - 1 if exclude_self else n)
    if k_out <= 0 or nq == 0:
        return np.zeros((nq, max(k_out, 0)), np.float32), np.zeros((nq, max(k_out, 0)), np.int64)
    k_search = k_out + 1 if exclude_self else k_out
    gpu = _use_gpu(k_search)
    method = "exact"
    if n > approx_above:
        method = "ivf" if approx == "auto" else approx
    index, _keep = _build_index(reference, method=method, gpu=gpu, k=k_search, batch_size=batch_size)
    sims = np.empty((nq, k_out), np.float32)
    idx = np.empty((nq, k_out), np.int64)
    for start in range(0, nq, batch_size):
        stop = min(start + batch_size, nq)
        s, i = index.search(l2_normalize(queries[start:stop], "queries"), k_search)
        if exclude_self:
            s, i = _drop_self(s, i, np.arange(start, stop))
        sims[start:stop], idx[start:stop] = s, i
    return sims, idx


def _drop_self(sims: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> tuple:
    """Remove each row's own index (or, if absent, its last neighbour) from a k+1 result."""
    mask = idx == rows[:, None]
    missing = ~mask.any(axis=1)
    mask[missing, -1] = True
    keep = ~mask
    shape = (idx.shape[0], idx.shape[1] - 1)
    return sims[keep].reshape(shape), idx[keep].reshape(shape)


def knn_agreement(
    ref_emb: np.ndarray,
    ref_labels: np.ndarray,
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    *,
    k: int,
    min_fraction: float,
    approx_above: int = APPROX_ABOVE,
    approx: str = "auto",
) -> np.ndarray:
    """Whether each query's label is shared by enough of its nearest reference neighbours.

    A pseudo label is more trustworthy when the labelled cells nearest in embedding space carry
    the same label. Query i passes when at least ``min_fraction`` of its k nearest reference
    rows have label ``query_labels[i]``. With fewer than k reference rows the fraction is taken
    over the rows there are.

    Edge cases, decided: ``min_fraction == 0`` means the filter is off and every query passes
    (also with an empty reference); otherwise an empty reference gives all False, since no
    evidence is not agreement. ``approx_above``/``approx`` as in `knn`.

    Returns:
        bool array [Q].
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1]; got {min_fraction}")
    ref_labels = np.asarray(ref_labels)
    query_labels = np.asarray(query_labels)
    n_ref, n_q = np.shape(ref_emb)[0], np.shape(query_emb)[0]
    if ref_labels.shape != (n_ref,):
        raise ValueError(f"ref_labels must have shape ({n_ref},); got {ref_labels.shape}")
    if query_labels.shape != (n_q,):
        raise ValueError(f"query_labels must have shape ({n_q},); got {query_labels.shape}")
    if min_fraction == 0.0:
        return np.ones(n_q, dtype=bool)
    if n_ref == 0:
        return np.zeros(n_q, dtype=bool)
    _, idx = knn(ref_emb, query_emb, k, approx_above=approx_above, approx=approx)
    found = idx >= 0  # an approximate index may return -1 for a missing neighbour
    agree = (ref_labels[np.maximum(idx, 0)] == query_labels[:, None]) & found
    fraction = agree.sum(axis=1) / np.maximum(found.sum(axis=1), 1)
    return fraction >= min_fraction - 1e-9  # 7 of 10 must pass at 0.7 despite rounding


def kmeans(
    x: np.ndarray, k: int, *, seed: int, niter: int = 20, init: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean k-means with faiss on a float32 copy of ``x`` (not normalised here).

    ``k`` is clipped to the number of rows. ``init`` [k', D] replaces faiss's random initial
    centroids (e.g. farthest-first points, so that a tight group of near-duplicates cannot take
    several seeds). Returns (centroids [k', D], assignment [N] int64).
    """
    arr = np.array(x, dtype=np.float32, copy=True, order="C")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"x must be a non-empty 2-D array [rows, dim]; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("x contains NaN or infinite values")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    k = min(k, arr.shape[0])
    if init is not None:
        init = np.ascontiguousarray(init, dtype=np.float32)
        if init.shape != (k, arr.shape[1]):
            raise ValueError(f"init must have shape ({k}, {arr.shape[1]}); got {init.shape}")
    # min_points_per_centroid=1 silences faiss's stderr warning on small inputs.
    km = faiss.Kmeans(arr.shape[1], k, niter=niter, seed=seed, verbose=False,
                      min_points_per_centroid=1)
    km.train(arr, init_centroids=init)
    _, assign = km.index.search(arr, 1)
    return np.asarray(km.centroids, np.float32), assign[:, 0].astype(np.int64)


def k_center_greedy(pool_emb: np.ndarray, center_emb: np.ndarray | None, budget: int, *,
                    approx_above: int = APPROX_ABOVE) -> np.ndarray:
    """Greedy k-center (core-set, Sener & Savarese, ICLR 2018): indices into ``pool_emb``.

    Repeatedly picks the pool point farthest (cosine geometry) from its nearest centre and makes
    it a centre. Initial nearest-centre distances come from faiss; each pick then updates them
    with one numpy pass, O(N * D). Without centres (None or zero rows) the first pick is the
    point farthest from the pool mean. Ties go to the lowest index, so the result is
    deterministic. ``budget`` is clipped to the pool size. More centres than ``approx_above``
    are searched with an approximate index (see `knn`).
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1; got {budget}")
    pool = l2_normalize(pool_emb, "pool_emb")
    n = pool.shape[0]
    budget = min(budget, n)
    if budget == 0:
        return np.zeros(0, np.int64)
    if center_emb is not None and np.shape(center_emb)[0] > 0:
        centers = l2_normalize(center_emb, "center_emb")
        _check_dims(pool, centers, "pool_emb", "center_emb")
        sims, _ = knn(centers, pool, 1, approx_above=approx_above)
        min_dist = 2.0 - 2.0 * np.clip(sims[:, 0].astype(np.float64), -1.0, 1.0)
    else:
        mean = pool.mean(axis=0, dtype=np.float64)
        min_dist = ((pool - mean) ** 2).sum(axis=1)
    picked = np.empty(budget, np.int64)
    for t in range(budget):
        p = int(np.argmax(min_dist))
        picked[t] = p
        dist_p = np.maximum(2.0 - 2.0 * (pool @ pool[p]).astype(np.float64), 0.0)
        np.minimum(min_dist, dist_p, out=min_dist)
        min_dist[picked[: t + 1]] = -np.inf
    return picked


def typicality(x: np.ndarray, *, k: int = 20) -> np.ndarray:
    """TypiClust typicality [N]: inverse mean distance to the k nearest other rows.

    Distances are Euclidean between unit rows (cosine geometry); k is clipped to half the set
    (as in Hacohen et al. 2022, so small clusters still measure density). A set of one row gets 0.
    """
    pts = l2_normalize(x, "x")
    if len(pts) < 2:
        return np.zeros(len(pts))
    sims, _ = knn(pts, pts, max(1, min(k, len(pts) // 2)), exclude_self=True)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims.astype(np.float64), 0.0))
    return 1.0 / (dist.mean(axis=1) + 1e-12)


def typical_cluster_points(
    pool_emb: np.ndarray,
    labeled_emb: np.ndarray | None,
    budget: int,
    *,
    min_cluster_size: int = 5,
    max_clusters: int = 500,
) -> np.ndarray:
    """TypiClust selection (Hacohen, Dekel & Weinshall, ICML 2022): indices into ``pool_emb``.

    k-means (cosine geometry) of labeled + pool into min(M + budget, max_clusters) clusters;
    each pick takes the cluster with the fewest labeled-or-picked members (ties: larger, then
    lower id), skipping clusters smaller than ``min_cluster_size`` while others remain, and from
    it the pool point with the highest `typicality` (ties: lower index). Deterministic (seed 0).
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1; got {budget}")
    pool = l2_normalize(pool_emb, "pool_emb")
    n, budget = len(pool), min(budget, len(pool))
    if budget == 0:
        return np.zeros(0, np.int64)
    lab = np.zeros((0, pool.shape[1]), np.float32)
    if labeled_emb is not None and np.shape(labeled_emb)[0] > 0:
        lab = l2_normalize(labeled_emb, "labeled_emb")
        _check_dims(pool, lab, "pool_emb", "labeled_emb")
    allx = np.vstack([pool, lab])
    _, assign = kmeans(allx, min(len(lab) + budget, max_clusters), seed=0)
    nc = int(assign.max()) + 1
    sizes = np.bincount(assign, minlength=nc)
    covered = np.bincount(assign[n:], minlength=nc)
    avail = np.bincount(assign[:n], minlength=nc)
    is_pool = np.arange(len(allx)) < n
    typical: dict[int, np.ndarray] = {}
    picks = np.empty(budget, np.int64)
    for t in range(budget):
        ok = (avail > 0) & (sizes >= min_cluster_size)
        ok = ok if ok.any() else avail > 0
        order = np.lexsort((np.arange(nc), -sizes, covered))
        c = int(order[ok[order]][0])
        members = np.flatnonzero(assign == c)
        if c not in typical:
            typical[c] = typicality(allx[members])
        p = int(members[np.argmax(np.where(is_pool[members], typical[c], -np.inf))])
        picks[t], is_pool[p] = p, False
        avail[c] -= 1
        covered[c] += 1
    return picks


def near_duplicates(
    emb: np.ndarray, *, threshold: float = 0.995, batch_size: int = BATCH_SIZE
) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, whose cosine similarity is above ``threshold``, sorted.

    Exact (a CPU `IndexFlatIP` range search, batched over queries): the same cell imported twice,
    or a crop of one, should be found without exception. The result can be quadratic in the
    size of a group of duplicates.
    """
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [-1, 1); got {threshold}")
    x = l2_normalize(emb, "emb")
    n = x.shape[0]
    if n < 2:
        return []
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        lims, sims, ids = index.range_search(x[start:stop], threshold)
        for row in range(stop - start):
            i = start + row
            lo, hi = lims[row], lims[row + 1]
            js = ids[lo:hi][(ids[lo:hi] > i) & (sims[lo:hi] > threshold)]
            pairs.extend((i, int(j)) for j in np.sort(js))
    return pairs
