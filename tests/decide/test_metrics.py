"""Metrics against scikit-learn and hand-computed values; calibration on known temperatures."""

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from sslall.decide._metrics import (
    ECE_BINS,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    softmax,
)

CLASSES = ["L1", "L2", "L3", "L4"]


def _random_case(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, 4, n))
    probs = softmax(rng.normal(size=(n, 4)) + 3 * np.eye(4)[y_pred])
    return y_true, y_pred, probs


def test_classification_metrics_match_sklearn():
    y_true, y_pred, probs = _random_case()
    m = classification_metrics(y_true, y_pred, probs, CLASSES)
    assert m["n"] == len(y_true)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3])
    for i, name in enumerate(CLASSES):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert row["support"] == s[i]
    assert m["ece"] == pytest.approx(expected_calibration_error(probs, y_true))
    picked = probs[np.arange(len(y_true)), y_true]
    assert m["nll"] == pytest.approx(-np.mean(np.log(picked)), rel=1e-5)


def test_specificity_and_absent_classes_by_hand():
    # class 0: TP 1, FN 1; class 1: TP 1; class 2 never true, predicted once; class 3 unseen.
    y_true, y_pred = [0, 0, 1], [0, 2, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_true, y_pred, None, CLASSES)
    assert m["per_class"]["L1"] == {"precision": 1.0, "recall": 0.5, "specificity": 1.0,
                                    "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["L3"]["specificity"] == pytest.approx(2 / 3)  # TN 2, FP 1
    assert m["per_class"]["L3"]["precision"] == 0.0 and m["per_class"]["L3"]["support"] == 0
    assert m["per_class"]["L4"] == {"precision": 0.0, "recall": 0.0, "specificity": 1.0, "f1": 0.0,
                                    "support": 0}
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # mean recall over classes in y_true
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["ece"] is None and m["nll"] is None


def test_metrics_are_plain_json_types():
    y_true, y_pred, probs = _random_case(1, 50)
    m = classification_metrics(y_true, y_pred, probs, CLASSES)
    assert json.loads(json.dumps(m)) == m
    assert type(m["accuracy"]) is float and type(m["ece"]) is float
    assert type(m["per_class"]["L1"]["support"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [([], [], "at least one"), ([0, 1], [0], "samples"), ([0, 4], [0, 1], "outside")],
)
def test_classification_metrics_rejects_bad_input(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, None, CLASSES)


def test_calibration_bins_are_right_closed_and_count_every_sample():
    # confidences 0.25 (on an edge: the lower bin), 0.5, 0.75, 1.0 and 0.6 in 4 bins
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0], [0.75, 0.25, 0, 0],
                      [0, 1.0, 0, 0], [0.4, 0.6, 0, 0]])
    y = np.array([0, 1, 0, 1, 1])
    bins = calibration_bins(probs, y, n_bins=4)
    assert bins.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins.count.tolist() == [1, 1, 2, 1]
    assert bins.confidence_sum.tolist() == pytest.approx([0.25, 0.5, 1.35, 1.0])
    assert bins.correct_sum.tolist() == [1, 0, 2, 1]  # argmax of a tie is the first class
    assert len(calibration_bins(probs, y).count) == ECE_BINS
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins(probs, y, n_bins=0)


def test_ece_known_example():
    probs = np.array([[0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.2, 0.65, 0.15], [0.45, 0.3, 0.25]])
    y = np.array([0, 1, 1, 2])
    # bins: {0.95: 1 right of 2}, {0.65: right}, {0.45: wrong}
    expected = 0.5 * abs(0.5 - 0.95) + 0.25 * abs(1 - 0.65) + 0.25 * abs(0 - 0.45)
    assert expected_calibration_error(probs, y) == pytest.approx(expected)
    # one bin: |accuracy - mean confidence|
    assert expected_calibration_error(probs, y, n_bins=1) == pytest.approx(abs(0.5 - 0.75))
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0
    assert expected_calibration_error(np.zeros((0, 3)), []) == 0.0


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(5000, 4)) * 2.0
    p = softmax(true_logits).astype(np.float64)
    y = (rng.random((5000, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # labels drawn from p
    assert fit_temperature(3.0 * true_logits, y) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits / 2.0, y) == pytest.approx(0.5, rel=0.1)
    calibrated = softmax(3.0 * true_logits, fit_temperature(3.0 * true_logits, y))
    assert expected_calibration_error(calibrated, y) < expected_calibration_error(
        softmax(3.0 * true_logits), y)


def test_fit_temperature_degenerate_cases_return_one():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(9, 3))
    assert fit_temperature(logits, rng.integers(0, 3, 9)) == 1.0  # too few samples
    assert fit_temperature(np.zeros((50, 3)), rng.integers(0, 3, 50)) == 1.0  # constant logits
    right = rng.normal(size=(50, 3))
    assert fit_temperature(right, right.argmax(1)) == 1.0  # all right: T -> 0 is not evidence
    bad = rng.normal(size=(50, 3))
    bad[0, 0] = np.nan
    assert fit_temperature(bad, rng.integers(0, 3, 50)) == 1.0


def test_softmax():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    p = softmax(logits)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-7)
    assert softmax(logits, 100.0)[0].max() < p[0].max()  # hotter is flatter
    with pytest.raises(ValueError, match="temperature"):
        softmax(logits, 0.0)
