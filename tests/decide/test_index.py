"""sslall.decide._index: exact answers on small hand-made arrays, checked against brute-force numpy."""

from __future__ import annotations

import numpy as np
import pytest

from sslall.decide._index import (
    k_center_greedy,
    kmeans,
    knn,
    knn_agreement,
    near_duplicates,
    typical_cluster_points,
    typicality,
)


def brute_knn(ref: np.ndarray, qry: np.ndarray, k: int, exclude_self: bool = False):
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    q = qry / np.linalg.norm(qry, axis=1, keepdims=True)
    sims = q @ r.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def angles(*degrees: float) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    ref, qry = rng.standard_normal((40, 6)), rng.standard_normal((9, 6))
    sims, idx = knn(ref, qry, 5)
    want_sims, want_idx = brute_knn(ref, qry, 5)
    assert idx.shape == (9, 5) and idx.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


def test_knn_is_cosine_and_does_not_mutate_inputs():
    ref = np.array([[10.0, 0.0], [0.0, 0.1], [-3.0, 0.0]])
    qry = np.array([[2.0, 0.1]])
    ref_before, qry_before = ref.copy(), qry.copy()
    sims, idx = knn(ref, qry, 3)
    assert idx.tolist() == [[0, 1, 2]]  # direction, not length, decides
    np.testing.assert_array_equal(ref, ref_before)
    np.testing.assert_array_equal(qry, qry_before)
    assert sims[0, 0] == pytest.approx(2.0 / np.hypot(2.0, 0.1), abs=1e-6)


def test_knn_clips_k_and_batches():
    rng = np.random.default_rng(2)
    ref, qry = rng.standard_normal((6, 4)), rng.standard_normal((10, 4))
    sims, idx = knn(ref, qry, 50)
    assert idx.shape == (10, 6)
    sims_b, idx_b = knn(ref, qry, 50, batch_size=3)
    np.testing.assert_array_equal(idx_b, idx)
    np.testing.assert_array_equal(sims_b, sims)


def test_knn_exclude_self():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((15, 5))
    sims, idx = knn(x, x, 4, exclude_self=True)
    assert not (idx == np.arange(15)[:, None]).any()
    want_sims, want_idx = brute_knn(x, x, 4, exclude_self=True)
    np.testing.assert_array_equal(idx, want_idx)
    # an exact duplicate is still a neighbour, only the row itself is dropped
    dup = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert knn(dup, dup, 1, exclude_self=True)[1][:2, 0].tolist() == [1, 0]
    assert knn(dup[:1], dup[:1], 3, exclude_self=True)[1].shape == (1, 0)


def test_knn_empty_reference_and_bad_input():
    sims, idx = knn(np.zeros((0, 3)), np.ones((4, 3)), 5)
    assert sims.shape == idx.shape == (4, 0)
    with pytest.raises(ValueError, match="same dimension; got 3 and 2"):
        knn(np.ones((4, 3)), np.ones((2, 2)), 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn(np.ones((4, 3)), np.ones((2, 3)), 0)
    with pytest.raises(ValueError, match="2-D"):
        knn(np.ones(4), np.ones((2, 4)), 1)
    with pytest.raises(ValueError, match="approx must be one of"):
        knn(np.ones((4, 3)), np.ones((2, 3)), 1, approx="lsh")
    with pytest.raises(ValueError, match="exclude_self"):
        knn(np.ones((4, 3)), np.ones((2, 3)), 1, exclude_self=True)


@pytest.mark.parametrize(("method", "data"), [
    ("auto", "mixture"), ("hnsw", "gaussian"), ("hnsw", "mixture"), ("ivf", "mixture"),
])
def test_approximate_index_recall(method, data):
    """recall@10 >= 0.9 against exact search; IVF is checked on clustered data, the structure
    real embeddings have (on structureless Gaussian data IVF needs far more probes)."""
    rng = np.random.default_rng(4)
    if data == "gaussian":
        ref = rng.standard_normal((3000, 32))
        qry = rng.standard_normal((300, 32))
    else:
        centres = rng.standard_normal((20, 16))
        ref = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 16))
        qry = ref[:300] + 0.05 * rng.standard_normal((300, 16))
    _, exact = knn(ref, qry, 10)
    _, approx = knn(ref, qry, 10, approx_above=100, approx=method)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9


def test_knn_agreement_exact():
    ref = angles(0, 5, 10, 90, 95)
    ref_labels = np.array([0, 0, 1, 1, 1])
    qry = angles(2, 92, 2)
    qry_labels = np.array([0, 1, 1])
    # k=3: q0 sees {0,5,10}° -> labels 0,0,1 (2/3 agree); q1 sees {90,95,10}° -> 1,1,1;
    # q2 (label 1) sees 0,0,1 -> 1/3
    got = knn_agreement(ref, ref_labels, qry, qry_labels, k=3, min_fraction=0.6)
    assert got.tolist() == [True, True, False]
    _, idx = brute_knn(ref, qry, 3)
    frac = (ref_labels[idx] == qry_labels[:, None]).mean(axis=1)
    assert got.tolist() == (frac >= 0.6).tolist()
    assert knn_agreement(ref, ref_labels, qry, qry_labels, k=3, min_fraction=1 / 3).all()


def test_knn_agreement_boundary_is_inclusive():
    # 7 of the 10 neighbours agree: exactly 0.7 must pass at min_fraction 0.7 (no float slip)
    ref = angles(*range(10))
    ref_labels = np.array([1] * 7 + [0] * 3)
    got = knn_agreement(ref, ref_labels, angles(5), np.array([1]), k=10, min_fraction=0.7)
    assert got.tolist() == [True]
    got = knn_agreement(ref, ref_labels, angles(5), np.array([1]), k=10, min_fraction=0.71)
    assert got.tolist() == [False]


def test_knn_agreement_edge_cases():
    qry, labels = angles(0, 90), np.array([0, 1])
    empty = np.zeros((0, 2))
    none = np.array([], dtype=int)
    assert knn_agreement(empty, none, qry, labels, k=5, min_fraction=0.0).tolist() == [True] * 2
    assert knn_agreement(empty, none, qry, labels, k=5, min_fraction=0.5).tolist() == [False] * 2
    # fewer reference rows than k: the fraction is over the rows there are
    assert knn_agreement(angles(1), np.array([0]), qry, labels, k=10,
                         min_fraction=1.0).tolist() == [True, False]
    with pytest.raises(ValueError, match="min_fraction"):
        knn_agreement(qry, labels, qry, labels, k=1, min_fraction=1.5)
    with pytest.raises(ValueError, match=r"ref_labels must have shape \(2,\); got \(3,\)"):
        knn_agreement(qry, np.array([0, 1, 2]), qry, labels, k=1, min_fraction=0.5)


def test_kmeans_separates_blobs_and_clips_k():
    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))])
    centroids, assign = kmeans(x, 2, seed=0)
    assert centroids.shape == (2, 2)
    assert len(set(assign[:10])) == 1 and len(set(assign[10:])) == 1
    assert assign[0] != assign[10]
    centroids, assign = kmeans(x[:3], 10, seed=0)
    assert centroids.shape == (3, 2) and sorted(assign.tolist()) == [0, 1, 2]
    again = kmeans(x, 2, seed=0)[1]
    np.testing.assert_array_equal(again, kmeans(x, 2, seed=0)[1])


def test_k_center_greedy_picks_far_points_in_order():
    pool = angles(10, 90, 180, 100)
    centres = angles(0)
    assert k_center_greedy(pool, centres, 2).tolist() == [2, 1]
    assert k_center_greedy(pool, centres, 10).tolist()[:2] == [2, 1]
    assert sorted(k_center_greedy(pool, centres, 10).tolist()) == [0, 1, 2, 3]


def test_k_center_greedy_without_centres_starts_far_from_mean():
    pool = angles(0, 3, 6, 120, 2)
    picks = k_center_greedy(pool, None, 2)
    assert picks.tolist() == [3, 0]
    np.testing.assert_array_equal(k_center_greedy(pool, np.zeros((0, 2)), 2), picks)
    with pytest.raises(ValueError, match="budget"):
        k_center_greedy(pool, None, 0)


def test_typicality_prefers_dense_points():
    x = angles(0, 1, 2, 3, 40)
    t = typicality(x, k=2)
    assert np.argmax(t) in (1, 2) and np.argmin(t) == 4


def test_typical_cluster_points_one_per_uncovered_cluster():
    rng = np.random.default_rng(6)
    blobs = [np.eye(4)[i] + rng.normal(0, 0.02, (8, 4)) for i in range(3)]
    pool = np.vstack(blobs)
    picks = typical_cluster_points(pool, None, 3)
    assert sorted(p // 8 for p in picks) == [0, 1, 2]
    # a labeled cell already covers blob 0: two picks go to blobs 1 and 2
    picks = typical_cluster_points(pool, np.eye(4)[:1], 2)
    assert sorted(p // 8 for p in picks) == [1, 2]


def test_near_duplicates():
    emb = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0], [0, 2.0, 0.05]])
    assert near_duplicates(emb) == [(0, 3), (1, 4)]
    assert near_duplicates(emb, threshold=0.9999) == [(0, 3)]
    assert near_duplicates(emb, batch_size=2) == [(0, 3), (1, 4)]
    assert near_duplicates(emb[:1]) == []


def test_approximate_index_takes_a_memory_map_in_batches_and_the_config_keys(tmp_path):
    """The reference may be a float16 memory map (never copied whole); recall on clusters."""
    from sslall.config import ConfigError, config_from_dict

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((30, 24))
    data = centres[rng.integers(0, 30, 4000)] + 0.2 * rng.standard_normal((4000, 24))
    ref = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float16, shape=data.shape)
    ref[:] = data
    qry = data[:200] + 0.02 * rng.standard_normal((200, 24))
    _, exact = knn(data.astype(np.float16), qry, 10)
    for method in ("ivf", "hnsw"):
        _, approx = knn(ref, qry, 10, approx_above=1000, approx=method, batch_size=512)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
        assert recall >= 0.95, (method, recall)
    config = config_from_dict({"classes": ["a", "b"], "index": {"approx_above": 0, "approx": "hnsw"}})
    assert config.index.approx_above == 0 and config.index.approx == "hnsw"
    with pytest.raises(ConfigError, match="index.approx"):
        config_from_dict({"classes": ["a", "b"], "index": {"approx": "lsh"}})
    with pytest.raises(ConfigError, match="index.approx_above"):
        config_from_dict({"classes": ["a", "b"], "index": {"approx_above": -1}})
