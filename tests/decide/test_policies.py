"""sslall.decide._policies: exact thresholds, masks and caps on hand-made arrays, and a policy
registered from user code being a valid `pseudo.policy`."""

from __future__ import annotations

import numpy as np
import pytest

from sslall.config import config_from_dict, key_setting
from sslall.decide._policies import (
    POLICIES,
    class_caps_from_prior,
    class_thresholds,
    confident_counts,
    register_policy,
    select_pseudo_labels,
)
from sslall.errors import ConfigError

PROBS = np.array([[0.90, 0.05, 0.05], [0.50, 0.40, 0.10], [0.34, 0.33, 0.33]])


def test_registered_policies_are_the_configs_built_ins():
    assert set(POLICIES) == set(key_setting("pseudo.policy").choices)


@pytest.fixture
def halfway():
    """A policy registered as user code would, removed again after the test."""
    @register_policy("halfway")
    def halfway(probs, *, threshold, labeled_counts):
        return np.full(probs.shape[1], threshold / 2)

    yield halfway
    del POLICIES["halfway"]


def test_a_registered_policy_is_used_and_accepted_by_the_config(halfway):
    got = class_thresholds("halfway", PROBS, threshold=0.8, labeled_counts=[1, 1, 1])
    assert got.tolist() == [0.4, 0.4, 0.4]
    config = config_from_dict({"classes": ["A", "B"], "pseudo": {"policy": "halfway"}})
    assert config.pseudo.policy == "halfway"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"classes": ["A", "B"], "pseudo": {"policy": "halfwya"}})
    assert str(info.value) == ("config key 'pseudo.policy': got 'halfwya'; did you mean 'halfway'? "
                               "(allowed: fixed, adaptive, propagation, halfway)")


def test_an_unregistered_policy_is_refused_again():
    assert "halfway" not in POLICIES
    with pytest.raises(ConfigError, match=r"got 'halfway' \(allowed: fixed, adaptive, propagation\)"):
        config_from_dict({"classes": ["A", "B"], "pseudo": {"policy": "halfway"}})


def test_registering_a_name_again_warns(halfway):
    with pytest.warns(RuntimeWarning, match="overwriting registered 'halfway'"):
        register_policy("halfway")(halfway)


# ---------------------------------------------------------------- policies

def test_fixed_policy():
    got = class_thresholds("fixed", PROBS, threshold=0.8, labeled_counts=[3, 2, 1])
    assert got.tolist() == [0.8, 0.8, 0.8]


def confident(cls: int, n: int, c: int = 3, p: float = 0.95) -> np.ndarray:
    row = np.full(c, (1 - p) / (c - 1))
    row[cls] = p
    return np.tile(row, (n, 1))


def test_adaptive_policy_exact_flexmatch_values():
    # sigma = [8, 6, 0] confident at tau = 0.9, nothing unconfident, so beta = [1, .75, 0]
    probs = np.vstack([confident(0, 8), confident(1, 6), confident(2, 2, p=0.5)])
    # the two class-2 rows are not confident: unused = 2 < max sigma = 8
    got = class_thresholds("adaptive", probs, threshold=0.9, labeled_counts=[1, 1, 1],
                           floor=0.3)
    # M(x) = x / (2 - x): M(1) = 1, M(.75) = .6, M(0) = 0 -> floor
    np.testing.assert_allclose(got, [0.9, 0.6 * 0.9, 0.3])


def test_adaptive_lowers_hard_classes_never_above_threshold():
    probs = np.vstack([confident(0, 10), confident(1, 3), confident(2, 1, p=0.6)])
    got = class_thresholds("adaptive", probs, threshold=0.9, labeled_counts=[5, 5, 5])
    assert got[0] == pytest.approx(0.9)
    assert got[1] < got[0] and (got <= 0.9).all()
    assert got[2] == pytest.approx((1 / 3 + 0.9) / 2)  # default floor: half-way to chance


def test_adaptive_warmup_counts_unconfident_rows():
    # 4 confident class-0 rows, 12 unconfident: beta_0 = 4 / 12 with warm-up, 1 without
    probs = np.vstack([confident(0, 4, c=2), confident(1, 12, c=2, p=0.6)])
    with_warmup = POLICIES["adaptive"](probs, threshold=0.9, labeled_counts=np.ones(2), floor=0.1)
    no_warmup = POLICIES["adaptive"](probs, threshold=0.9, labeled_counts=np.ones(2), floor=0.1,
                                     warmup=False)
    beta = 4 / 12
    np.testing.assert_allclose(with_warmup, [beta / (2 - beta) * 0.9, 0.1])
    np.testing.assert_allclose(no_warmup, [0.9, 0.1])


def test_class_thresholds_validates():
    with pytest.raises(ValueError, match=r"unknown pseudo-label policy 'adaptiv'.*adaptive, fixed"):
        class_thresholds("adaptiv", PROBS, threshold=0.9, labeled_counts=[1, 1, 1])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\); got 1.5"):
        class_thresholds("fixed", PROBS, threshold=1.5, labeled_counts=[1, 1, 1])
    with pytest.raises(ValueError, match=r"labeled_counts must have shape \(3,\); got \(2,\)"):
        class_thresholds("fixed", PROBS, threshold=0.9, labeled_counts=[1, 1])
    with pytest.raises(ValueError, match="row 1 sums to 1.500000"):
        class_thresholds("fixed", [[0.5, 0.5], [1.0, 0.5]], threshold=0.9, labeled_counts=[1, 1])
    with pytest.raises(ValueError, match=r"\[N, C\] with C >= 2; got shape \(3,\)"):
        class_thresholds("fixed", [0.2, 0.3, 0.5], threshold=0.9, labeled_counts=[1])


# ---------------------------------------------------------------- pseudo-label selection

SEL = np.array([
    [0.95, 0.05],  # 0: class 0, passes .9
    [0.85, 0.15],  # 1: class 0, fails .9
    [0.20, 0.80],  # 2: class 1, passes .7
    [0.10, 0.90],  # 3: class 1, passes .7
    [0.97, 0.03],  # 4: class 0, passes .9
    [0.35, 0.65],  # 5: class 1, fails .7
    [0.20, 0.80],  # 6: class 1, passes .7, ties with 2
])


def test_select_pseudo_labels_without_caps():
    mask = select_pseudo_labels(SEL, np.array([0.9, 0.7]))
    assert np.flatnonzero(mask).tolist() == [0, 2, 3, 4, 6]
    assert confident_counts(SEL, [0.9, 0.7]).tolist() == [2, 3]


def test_select_pseudo_labels_with_caps_keeps_most_confident():
    mask = select_pseudo_labels(SEL, np.array([0.9, 0.7]), class_cap=np.array([1, 2]))
    # class 0 keeps 4 (.97) over 0 (.95); class 1 keeps 3 (.90), then 2 over 6 (tie, lower index)
    assert np.flatnonzero(mask).tolist() == [2, 3, 4]
    mask = select_pseudo_labels(SEL, np.array([0.9, 0.7]), class_cap=np.array([0, 10]))
    assert np.flatnonzero(mask).tolist() == [2, 3, 6]


def test_select_pseudo_labels_validates():
    with pytest.raises(ValueError, match=r"thresholds must have shape \(2,\); got \(3,\)"):
        select_pseudo_labels(SEL, np.array([0.9, 0.7, 0.5]))
    with pytest.raises(ValueError, match="class_cap must hold whole numbers"):
        select_pseudo_labels(SEL, np.array([0.9, 0.7]), class_cap=np.array([1.5, 2]))
    with pytest.raises(ValueError, match="non-negative"):
        select_pseudo_labels(SEL, np.array([0.9, 0.7]), class_cap=np.array([-1, 2]))


def with_counts(*counts: int, c: int | None = None) -> np.ndarray:
    """Probabilities with counts[k] rows confidently (p = .95) predicted as class k."""
    c = c or len(counts)
    return np.vstack([confident(k, n, c=c) for k, n in enumerate(counts) if n]
                     + [np.full((1, c), 1 / c)])  # plus one unconfident row


def caps(labeled, available, **kw) -> list[int]:
    probs = with_counts(*available)
    got = class_caps_from_prior(np.array(labeled), probs, np.full(len(available), 0.9), **kw)
    return got.tolist()


def test_class_caps_keep_the_labeled_prior():
    # prior .6/.3/.1; class 1 limits: S = 100 / .3 = 333.3 -> 200, 100, 33
    assert caps([60, 30, 10], [500, 100, 40]) == [200, 100, 33]
    # exact in integers: the limiting class gets all of its candidates, no rounding loss
    assert caps([1, 2], [3, 6]) == [3, 6]
    assert caps([3, 7], [30, 700]) == [30, 70]


def test_class_caps_floor_keeps_the_loop_moving():
    # class 2 has no confident candidate: S = 0, but each class may still add min_per_class
    assert caps([5, 5, 5], [50, 40, 0]) == [1, 1, 0]
    assert caps([5, 5, 5], [50, 40, 0], min_per_class=3) == [3, 3, 0]
    assert caps([5, 5, 5], [50, 40, 0], min_per_class=0) == [0, 0, 0]
    with pytest.raises(ValueError, match="positive total"):
        caps([0, 0], [3, 3])
    with pytest.raises(ValueError, match=r"labeled_counts must have shape \(3,\); got \(2,\)"):
        caps([1, 1], [3, 3, 3])


def test_caps_and_selection_together_keep_the_prior():
    probs = with_counts(40, 12, 9)
    thresholds = np.full(3, 0.9)
    cap = class_caps_from_prior(np.array([4, 2, 1]), probs, thresholds)
    mask = select_pseudo_labels(probs, thresholds, class_cap=cap)
    # class 1 limits (12 / 2): 24, 12, 6 — the 4:2:1 prior
    assert np.bincount(probs[mask].argmax(1), minlength=3).tolist() == [24, 12, 6]

