"""Confident learning on hand-made probabilities: a flipped label among clearly separated
classes is found, correct labels are not."""

import numpy as np
import pytest

from sslall.decide._label_issues import find_label_issues, suspected_labels
from sslall.store._records import Sample
from sslall.store._snapshot import Snapshot

CLASSES = ("A", "B", "C")


def separated(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """n rows per class, each given 0.9 on its own class."""
    labels = np.repeat(np.arange(3), n)
    probs = np.full((3 * n, 3), 0.05)
    probs[np.arange(3 * n), labels] = 0.9
    return labels, probs


def test_a_flipped_label_is_found_and_correct_ones_are_not() -> None:
    labels, probs = separated()
    labels[4] = 2  # the model says A (0.9), the label says C (0.05)
    found, quality = find_label_issues(labels, probs)
    assert found.tolist() == [4]
    assert quality[4] == pytest.approx(0.05)
    assert np.delete(quality, 4) == pytest.approx(0.9)


def test_clean_labels_give_no_suspects() -> None:
    labels, probs = separated()
    found, quality = find_label_issues(labels, probs)
    assert found.tolist() == []
    assert quality == pytest.approx(0.9)


def test_suspects_are_ranked_most_suspect_first() -> None:
    labels, probs = separated(8)
    labels[[1, 9]] = [1, 2]
    probs[1] = [0.9, 0.08, 0.02]  # given B at 0.08: less suspect than row 9 (C at 0.05)
    found, _ = find_label_issues(labels, probs)
    assert found.tolist() == [9, 1]


def test_too_few_rows_or_classes_find_nothing_and_bad_shapes_fail() -> None:
    assert find_label_issues(np.array([0]), np.array([[0.1, 0.9]]))[0].tolist() == []
    assert find_label_issues(np.zeros(3, int), np.ones((3, 1)))[0].tolist() == []
    with pytest.raises(ValueError, match="shape"):
        find_label_issues(np.zeros(3, int), np.ones((2, 2)))
    with pytest.raises(ValueError, match="0..1"):
        find_label_issues(np.array([0, 2]), np.full((2, 2), 0.5))


def test_suspected_labels_name_the_sample_its_label_and_the_models_class() -> None:
    labels, probs = separated()
    labels[4] = 2
    rows = [Sample(f"{i:064x}", f"/x/{i}.png", "holdout" if i % 2 else "labeled",
                   CLASSES[k], "import", None, None, 1.0, None, 0, None, "t", "t")
            for i, k in enumerate(labels)]
    snapshot = Snapshot(CLASSES, [Sample(f"{99:064x}", "/x/u.png", "unlabeled", None, None, None,
                                         None, 1.0, None, 0, None, "t", "t"), *rows])
    issues = suspected_labels(snapshot, np.arange(1, len(rows) + 1), probs)
    assert [i.as_dict() for i in issues] == [{
        "sample_id": f"{4:064x}", "path": "/x/4.png", "pool": "labeled", "label": "C",
        "suggested": "A", "p_label": 0.05, "p_suggested": 0.9, "quality": 0.05}]
