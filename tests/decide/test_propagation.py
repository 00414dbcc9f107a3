"""Label propagation (`sslall.decide._propagation`) on hand-made point sets with known answers."""

import numpy as np
import pytest
from sklearn.datasets import make_moons

from sslall.decide._propagation import PropagationParams, certainty, propagate_labels


def test_follows_the_manifold_where_the_nearest_seed_does_not():
    # two interleaved half-moons, one seed each at the tip of its moon: the nearest seed is the
    # wrong class for many points, the graph's paths along each moon are right (a moon is ~40
    # hops long at k=10, so the solver needs more than the default 20 iterations to cross it)
    x, y = make_moons(n_samples=400, noise=0.04, random_state=0)
    seeds = np.array([np.argmin(x[:, 0] + 10 * (y != 0)), np.argmax(x[:, 0] - 10 * (y != 1))])
    nearest_seed = np.argmin(((x[:, None, :] - x[seeds][None]) ** 2).sum(-1), axis=1)
    z = propagate_labels(np.c_[x, np.ones(len(x))], seeds, y[seeds], 2,
                         PropagationParams(k=10, max_iter=100))
    assert (nearest_seed == y).mean() < 0.8
    assert (z.argmax(1) == y).mean() > 0.97
    np.testing.assert_allclose(z.sum(1), 1.0)


def test_class_balanced_seeds_do_not_let_the_bigger_class_swamp():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    x = np.concatenate([centres[0] + rng.normal(size=(100, 3)), centres[1] + rng.normal(size=(100, 3))])
    y = np.repeat([0, 1], 100)
    seeds = np.r_[np.arange(30), [100]]  # 30 seeds of class 0, one of class 1
    z = propagate_labels(x, seeds, y[seeds], 2, PropagationParams(k=10))
    assert (z[100:].argmax(1) == 1).mean() > 0.95


def test_unreachable_rows_are_uniform_with_zero_certainty():
    x = np.array([[1.0, 0, 0], [0.99, 0.1, 0], [0, 0, 1.0], [0, 0.05, 1.0]])
    z = propagate_labels(x, np.array([0]), np.array([1]), 3, PropagationParams(k=1))
    np.testing.assert_allclose(z[2:], 1 / 3)
    assert z[1].argmax() == 1 and z[1, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(certainty(z)[2:], 0.0, atol=1e-12)


def test_certainty_is_one_minus_normalised_entropy():
    z = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]])
    np.testing.assert_allclose(certainty(z), [1.0, 0.0, 0.5])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labeled": np.array([], np.int64), "labels": np.array([], np.int64)}, "at least one"),
    ({"labeled": np.array([0]), "labels": np.array([5])}, "labels must be in"),
    ({"labeled": np.array([9]), "labels": np.array([0])}, "labeled indices"),
    ({"labeled": np.array([0, 1]), "labels": np.array([0])}, "differ in length"),
])
def test_bad_input_is_a_value_error_saying_what(kwargs, message):
    with pytest.raises(ValueError, match=message):
        propagate_labels(np.eye(4), num_classes=2, **kwargs)


@pytest.mark.parametrize("bad", [{"k": 0}, {"alpha": 1.0}, {"gamma": 0.0}, {"max_iter": 0}])
def test_bad_params_are_refused(bad):
    with pytest.raises(ValueError):
        PropagationParams(**bad)
