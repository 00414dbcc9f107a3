"""OOD scores on hand-made embeddings: the threshold's quantile, flags, the files' round trip."""

from pathlib import Path

import numpy as np
import pytest

from sslall.decide._ood import (
    OOD_JSON,
    OOD_NPZ,
    calibrate_ood,
    knn_distance,
    read_ood,
    round_ood_summary,
    threshold_at,
    write_ood,
)
from sslall.errors import ModelError


def clusters(rng: np.random.Generator, n: int) -> np.ndarray:
    """n points around each of two directions of an 8-D space (cosine ~0.99 to their centre)."""
    centres = np.eye(8)[:2] * 10
    return np.concatenate([c + rng.normal(0, 0.5, (n, 8)) for c in centres]).astype(np.float32)


def test_threshold_is_an_observed_score_at_the_quantile() -> None:
    scores = np.arange(1, 101, dtype=np.float32)[::-1]  # 1..100, in any order
    assert threshold_at(scores, 0.99) == 99.0
    assert threshold_at(scores, 0.95) == 95.0
    assert threshold_at(scores, 1.0) == 100.0
    assert threshold_at(np.array([0.3]), 0.99) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="quantile"):
        threshold_at(scores, 0.0)
    with pytest.raises(ValueError, match="no calibration score"):
        threshold_at(np.zeros(0), 0.99)


def test_knn_distance_is_the_mean_cosine_distance_to_the_k_nearest() -> None:
    reference = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    query = np.array([[2, 0]], dtype=np.float32)  # cos 1, 0, -1 to the three
    assert knn_distance(reference, query, 1) == pytest.approx([0.0], abs=1e-6)
    assert knn_distance(reference, query, 2) == pytest.approx([0.5], abs=1e-6)
    assert knn_distance(reference, query, 3) == pytest.approx([1.0], abs=1e-6)


def test_a_far_point_is_flagged_and_near_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    train, holdout = clusters(rng, 100), clusters(rng, 50)
    emb = np.concatenate([train, holdout])
    labeled = np.arange(len(emb)) < len(train)
    cal = calibrate_ood(emb, labeled, ~labeled, k=5, quantile=0.99, max_reference=1000)
    assert cal.source == "holdout" and len(cal.scores) == 100 and len(cal.reference) == 200
    assert cal.reference.dtype == np.float16
    # exactly the holdout cells above the 99th percentile are flagged: 1 of 100
    assert int(cal.flag(cal.score(holdout)).sum()) == 1
    near = clusters(np.random.default_rng(1), 20)
    far = np.eye(8)[5:7].astype(np.float32) * 10  # another direction entirely
    assert not cal.flag(cal.score(near)).any()
    assert cal.flag(cal.score(far)).all()
    assert cal.score(far).min() > 10 * cal.threshold


def test_without_a_holdout_the_calibration_is_leave_one_out_and_the_reference_is_capped() -> None:
    emb = clusters(np.random.default_rng(2), 100)
    everyone = np.ones(len(emb), bool)
    cal = calibrate_ood(emb, everyone, ~everyone, k=3, quantile=0.95, max_reference=50, seed=4)
    assert cal.source == "leave-one-out" and len(cal.reference) == 50 and len(cal.scores) == 50
    assert cal.scores.min() > 0  # a cell is not its own neighbour
    again = calibrate_ood(emb, everyone, ~everyone, k=3, quantile=0.95, max_reference=50, seed=4)
    assert np.array_equal(cal.reference, again.reference)  # the sample is seeded
    one = np.zeros(len(emb), bool)
    one[0] = True
    assert calibrate_ood(emb, one, ~one, k=3, quantile=0.95, max_reference=50) is None


def test_with_quantile_moves_the_threshold_without_rescoring() -> None:
    emb = clusters(np.random.default_rng(3), 60)
    labeled = np.arange(len(emb)) % 2 == 0
    cal = calibrate_ood(emb, labeled, ~labeled, k=5, quantile=0.99, max_reference=1000)
    loose = cal.with_quantile(0.5)
    assert loose.threshold == threshold_at(cal.scores, 0.5) < cal.threshold
    assert np.array_equal(loose.scores, cal.scores)


def test_files_round_trip_and_missing_files_mean_unavailable(tmp_path: Path) -> None:
    emb = clusters(np.random.default_rng(5), 40)
    labeled = np.arange(len(emb)) < 60
    cal = calibrate_ood(emb, labeled, ~labeled, k=5, quantile=0.9, max_reference=1000)
    ids = [f"s{i}" for i in range(len(emb))]
    pools = ["labeled" if x else "unlabeled" for x in labeled]
    summary = round_ood_summary(cal, emb, ids, pools, {"s70", "s71"})
    assert summary["pools"]["labeled"]["scored"] == 60
    assert set(summary["review"]) == {"s70", "s71"}
    assert read_ood(tmp_path) is None
    write_ood(tmp_path, cal, summary)
    loaded, meta = read_ood(tmp_path)
    assert meta["threshold"] == pytest.approx(cal.threshold) == pytest.approx(loaded.threshold)
    assert meta["review"] == summary["review"] and meta["source"] == "holdout"
    assert np.allclose(loaded.score(emb[:5]), cal.score(emb[:5]), atol=1e-6)
    (tmp_path / OOD_NPZ).write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="damaged"):
        read_ood(tmp_path)
    (tmp_path / OOD_JSON).unlink()
    assert read_ood(tmp_path) is None
