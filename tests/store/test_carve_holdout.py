"""A holdout carved out of the labeled pool after import: stratified counts, whole patients,
events through the one move function, a refused carve that would empty a class, and the
holdout-too-small warning."""

from collections import Counter
from pathlib import Path

import pytest
from conftest import write_image

from sslall._fsutil import sha256_file
from sslall.errors import UsageError
from sslall.store._carve import CARVE_ACTOR, CARVE_REASON, carve_holdout
from sslall.store._holdout import MIN_HOLDOUT_PER_CLASS, holdout_warning
from sslall.store._integrity import check_store
from sslall.store._pools import PoolStore
from sslall.store._records import NewSample

CLASSES = ("A", "B", "C")


def labeled_store(tmp_path: Path, per_class: dict[str, int], patients: int = 0) -> PoolStore:
    """A store whose labeled pool holds `per_class` real images (patient i % `patients`)."""
    store = PoolStore(tmp_path / "pools.db", create=True)
    new, i = [], 0
    for label, n in per_class.items():
        for _ in range(n):
            path = write_image(tmp_path / "img" / f"{i}.png", i)
            new.append(NewSample(sha256_file(path), str(path), "labeled", label,
                                 patient=f"p{i % patients}" if patients else None))
            i += 1
    store.add_samples(new)
    return store


def test_carve_moves_round_fraction_per_class_with_events(tmp_path: Path) -> None:
    with labeled_store(tmp_path, {"A": 10, "B": 20, "C": 5}) as store:
        report = carve_holdout(store, CLASSES, 0.2)
        assert report.moved == {"A": 2, "B": 4, "C": 1} and report.total == 7
        assert not report.by_patient
        assert store.counts()["holdout"] == {"A": 2, "B": 4, "C": 1}
        assert report.labeled == {"A": 8, "B": 16, "C": 4}
        carved = [e for e in store.events() if e[8] == CARVE_REASON]
        assert len(carved) == 7
        assert all((e[4], e[5], e[9]) == ("labeled", "holdout", CARVE_ACTOR) for e in carved)
        assert all(s.label_source == "import" for s in store.samples("holdout"))
        assert check_store(store, CLASSES) == []


def test_carve_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    with labeled_store(tmp_path, {"A": 12, "B": 12, "C": 12}, patients=6) as store:
        report = carve_holdout(store, CLASSES, 0.34)
        assert report.by_patient and report.total > 0
        held = {s.patient for s in store.samples("holdout")}
        kept = {s.patient for s in store.samples("labeled")}
        assert held and not held & kept
        assert check_store(store, CLASSES) == []


def test_a_carve_that_would_empty_a_class_is_refused_and_moves_nothing(tmp_path: Path) -> None:
    with labeled_store(tmp_path, {"A": 10, "B": 10, "C": 1}) as store:
        events = len(store.events())
        with pytest.raises(UsageError, match="no labeled cell of class\\(es\\) C"):
            carve_holdout(store, CLASSES, 0.6)  # round(0.6 * 1) = 1 of C's single cell
        assert store.pool_sizes()["holdout"] == 0 and len(store.events()) == events


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_fraction_outside_zero_one_is_refused(tmp_path: Path, fraction: float) -> None:
    with labeled_store(tmp_path, {"A": 3}) as store, pytest.raises(UsageError, match="--fraction"):
        carve_holdout(store, CLASSES, fraction)


def test_an_empty_labeled_pool_is_refused(tmp_path: Path) -> None:
    with PoolStore(tmp_path / "pools.db", create=True) as store:
        with pytest.raises(UsageError, match="labeled pool is empty"):
            carve_holdout(store, CLASSES, 0.2)


def test_holdout_warning_names_the_small_classes() -> None:
    enough = MIN_HOLDOUT_PER_CLASS
    assert holdout_warning(Counter(), CLASSES) is None  # no holdout: round says so itself
    assert holdout_warning({"A": enough, "B": enough, "C": enough}, CLASSES) is None
    line = holdout_warning({"A": enough, "B": 3}, CLASSES)
    assert line is not None and f"fewer than {enough} cells of class(es) B 3, C 0" in line
    assert "sslall holdout carve" in line
