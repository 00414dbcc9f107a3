"""sslall.decide._acquisition: exact rankings and batches on hand-made arrays, the public
`acquire`'s validation, and a strategy registered from user code being a valid `route.strategy`."""

from __future__ import annotations

import numpy as np
import pytest

from sslall.config import config_from_dict, key_setting
from sslall.decide._acquisition import (
    BATCH_STRATEGIES,
    STRATEGIES,
    AcquisitionContext,
    acquire,
    acquire_scored,
    diversity_split,
    register_strategy,
    select_top_k,
    strategy_names,
)
from sslall.errors import ConfigError

# Five cells, three classes. By hand:
#   1 - max p :  .10  .50  .66  .40  .55                       -> 2, 4, 1, 3, 0
#   margin    : -.85 -.10 -.01 -.40  .00                       -> 4, 2, 1, 3, 0
#   entropy   :  .394 .943 1.099 .950 .949                     -> 2, 3, 4, 1, 0
PROBS = np.array([
    [0.90, 0.05, 0.05],
    [0.50, 0.40, 0.10],
    [0.34, 0.33, 0.33],
    [0.60, 0.20, 0.20],
    [0.45, 0.45, 0.10],
])


def ranking(strategy: str, **arrays) -> list[int]:
    return acquire(PROBS, len(PROBS), strategy=strategy, diversity="none", **arrays).tolist()


def test_registered_strategies_are_the_configs_built_ins():
    assert set(strategy_names()) == set(key_setting("route.strategy").choices)
    assert set(BATCH_STRATEGIES) == {"coreset", "typiclust"}
    assert not set(STRATEGIES) & set(BATCH_STRATEGIES)


# ---------------------------------------------------------------- acquisition measures

def test_least_confidence_margin_entropy_rankings():
    assert ranking("least-confidence") == [2, 4, 1, 3, 0]
    assert ranking("margin") == [4, 2, 1, 3, 0]
    assert ranking("entropy") == [2, 3, 4, 1, 0]
    np.testing.assert_allclose(STRATEGIES["margin"](AcquisitionContext(PROBS)),
                               [-0.85, -0.1, -0.01, -0.4, 0.0], atol=1e-12)


MC = np.array([  # T=2 Monte-Carlo samples, 4 cells, 2 classes
    [[1.0, 0.0], [0.99, 0.01], [0.5, 0.5], [0.8, 0.2]],
    [[0.0, 1.0], [0.99, 0.01], [0.5, 0.5], [0.2, 0.8]],
])


def test_bald_ranks_disagreement_over_aleatoric_noise():
    ctx = AcquisitionContext(probs=MC.mean(axis=0), mc_probs=MC)
    scores = STRATEGIES["bald"](ctx)
    assert scores[0] == pytest.approx(np.log(2))  # full disagreement
    assert scores[1] == pytest.approx(0.0, abs=1e-12)  # confident agreement
    assert scores[2] == pytest.approx(0.0, abs=1e-12)  # agree on 50/50: aleatoric, not epistemic
    pick = {"probs": MC.mean(axis=0), "budget": 4, "mc_probs": MC, "diversity": "none"}
    assert acquire(strategy="bald", **pick).tolist() == [0, 3, 1, 2]
    # entropy would put the aleatoric cell 2 first (tied with 0); BALD puts it last
    assert acquire(strategy="entropy", **pick).tolist()[:2] == [0, 2]


def test_bald_needs_mc_probs():
    with pytest.raises(ValueError, match=r"'bald' needs mc_probs \[T, N, C\]; got None"):
        acquire(PROBS, 2, strategy="bald")
    with pytest.raises(ValueError, match=r"^mc_probs must be finite with shape \(\*, 5, 3\); "
                                         r"got shape \(2, 4, 2\)"):
        acquire(PROBS, 2, strategy="bald", mc_probs=MC)


def test_random_follows_the_rng():
    a = acquire(PROBS, 3, strategy="random", rng=np.random.default_rng(7))
    b = acquire(PROBS, 3, strategy="random", rng=7)  # a seed is a fresh Generator of it
    want = np.argsort(-np.random.default_rng(7).random(5), kind="stable")[:3]
    assert a.tolist() == b.tolist() == want.tolist()
    seed0 = np.argsort(-np.random.default_rng(0).random(5), kind="stable")[:3]
    assert acquire(PROBS, 3, strategy="random").tolist() == seed0.tolist()  # None: seed 0


def test_coreset_picks_the_far_point():
    pool = np.array([[1.0, 0.02], [1.0, -0.02], [0.0, 1.0], [1.0, 0.05], [0.7, 0.7]])
    picks = acquire(np.full((5, 2), 0.5), 2, strategy="coreset", embeddings=pool,
                    labeled_embeddings=np.array([[1.0, 0.0]]))
    assert picks.tolist() == [2, 4]


def blobs(rng: np.random.Generator, dim: int, n_blobs: int, core: int, fringe: int):
    """Blobs around the unit axes: a dense core (noise .01) then a sparse fringe (noise .25)."""
    parts = []
    for b in range(n_blobs):
        centre = np.eye(dim)[b]
        parts += [centre + rng.normal(0, 0.01, (core, dim)),
                  centre + rng.normal(0, 0.25, (fringe, dim))]
    return np.vstack(parts)


def test_typiclust_takes_one_typical_cell_per_dense_cluster():
    rng = np.random.default_rng(8)
    emb = blobs(rng, dim=6, n_blobs=3, core=8, fringe=4)  # rows: blob b = 12b .. 12b + 11
    probs = np.full((36, 2), 0.5)
    picks = acquire(probs, 3, strategy="typiclust", embeddings=emb)
    assert sorted(p // 12 for p in picks) == [0, 1, 2]
    assert all(p % 12 < 8 for p in picks)  # from the dense core, not the fringe
    covered = np.eye(6)[1:2]  # blob 1 is already covered by a labeled cell
    picks = acquire(probs, 2, strategy="typiclust", embeddings=emb, labeled_embeddings=covered)
    assert sorted(p // 12 for p in picks) == [0, 2]


# ---------------------------------------------------------------- batch selection

def test_diversity_spreads_a_batch_over_clusters():
    rng = np.random.default_rng(9)
    dim = 8
    twins = np.eye(dim)[0] + rng.normal(0, 1e-4, (50, dim))  # 50 near-identical cells
    others = np.vstack([np.eye(dim)[g] + rng.normal(0, 0.01, (10, dim)) for g in range(1, 5)])
    emb = np.vstack([twins, others])
    scores = np.concatenate([np.linspace(0.99, 0.95, 50), np.linspace(0.90, 0.80, 40)])
    plain = select_top_k(scores, 5, embeddings=emb, diversity="none")
    assert plain.tolist() == [0, 1, 2, 3, 4]
    # 90 candidates = 5 picks x 18: the slice holds every candidate
    spread = select_top_k(scores, 5, embeddings=emb, candidate_factor=18)
    assert spread[0] == 0  # best twin first, in descending score
    group = [0 if i < 50 else 1 + (i - 50) // 10 for i in spread]
    assert sorted(group) == [0, 1, 2, 3, 4]
    assert spread.tolist()[1:] == [50, 60, 70, 80]  # best of each other cluster
    np.testing.assert_array_equal(np.sort(scores[spread])[::-1], scores[spread])


@pytest.mark.parametrize(("n", "budget", "factor", "split"), [
    (1000, 20, 3, (0, 20)),   # a big pool: all 20 picked among the top 60
    (60, 20, 3, (0, 20)),     # exactly factor x budget
    (30, 20, 3, (15, 5)),     # top 15 by rank, then 5 picks among ranks 16-30
    (50, 20, 3, (5, 15)),     # top 5, then 15 picks among ranks 6-50
    (21, 20, 3, (20, 0)),     # no room for a slice: plain ranking
    (5, 20, 3, (5, 0)),       # fewer candidates than the budget
    (100, 20, 1, (20, 0)),    # factor 1: plain ranking
    (100, 1, 3, (1, 0)),      # one pick: the best
])
def test_diversity_split_keeps_picks_within_factor_times_their_number(n, budget, factor, split):
    head, k = diversity_split(n, budget, factor)
    assert (head, k) == split
    assert head + factor * k <= n


def test_small_pool_diversity_only_among_the_top_of_the_ranking():
    """30 candidates, budget 20, factor 3: the top 15 by score go in outright; the 5 diversity
    picks come from ranks 16-30: one of 11 twins (the best, rank 16) and the 4 lone cells."""
    dim = 8
    emb = np.zeros((30, dim))
    emb[:15, 5] = 1.0                                   # ranks 1-15: never clustered
    emb[15:26] = np.eye(dim)[0] + np.random.default_rng(1).normal(0, 1e-4, (11, dim))
    emb[26:30] = np.eye(dim)[1:5]
    scores = np.linspace(1.0, 0.1, 30)                  # row i has rank i + 1
    got = select_top_k(scores, 20, embeddings=emb, candidate_factor=3)
    assert got.tolist() == [*range(15), 15, 26, 27, 28, 29]


def test_diversity_never_reaches_below_the_slice():
    """25 candidates, budget 10, factor 3: the top 3 go in by rank, 7 picks among ranks 4-24.
    The 5 worst cells sit alone, far from a clump of the 20 best: the 4 inside the slice are
    picked, the last (rank 25) is not, though clustering all 25 (the old rule) took it."""
    rng = np.random.default_rng(2)
    emb = np.vstack([np.eye(16)[0] + rng.normal(0, 1e-3, (20, 16)), np.eye(16)[1:6]])
    scores = np.linspace(1.0, 0.1, 25)
    got = select_top_k(scores, 10, embeddings=emb, candidate_factor=3).tolist()
    assert len(set(got)) == 10 and got[:3] == [0, 1, 2]
    assert {20, 21, 22, 23} <= set(got) and 24 not in got


def test_acquire_scored_returns_the_strategy_scores():
    picked, scores = acquire_scored(PROBS, 2, strategy="margin")
    assert picked.tolist() == [4, 2]
    np.testing.assert_allclose(scores, [-0.85, -0.10, -0.01, -0.40, 0.0])
    picked, scores = acquire_scored(PROBS, 2, strategy="coreset", embeddings=np.eye(5))
    assert scores is None and len(picked) == 2


def test_top_k_ties_by_index_and_budget_bounds():
    assert select_top_k(np.array([1.0, 2.0, 2.0, 1.0]), 3, diversity="none").tolist() == [1, 2, 0]
    assert sorted(acquire(PROBS, 99, embeddings=np.eye(5)).tolist()) == [0, 1, 2, 3, 4]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="budget must be a positive integer"):
            acquire(PROBS, bad, embeddings=np.eye(5))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown acquisition strategy 'margn'; valid: bald, "
                                         r"coreset, entropy.*Did you mean 'margin'\?"):
        acquire(PROBS, 3, strategy="margn")
    with pytest.raises(ValueError, match="unknown diversity 'dpp'; valid: kmeans, none"):
        acquire(PROBS, 3, diversity="dpp")
    with pytest.raises(ValueError, match=r"^embeddings must be finite with shape \(5, \*\)"):
        acquire(PROBS, 3, embeddings=np.ones((4, 2)))


def contract_inputs(seed: int) -> dict:
    rng = np.random.default_rng(123)
    n, c, d = 60, 3, 8
    logits = rng.normal(0, 2, (n, c))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mc_logits = logits + rng.normal(0, 1, (4, n, c))
    mc = np.exp(mc_logits) / np.exp(mc_logits).sum(axis=2, keepdims=True)
    return {"probs": probs, "embeddings": rng.normal(size=(n, d)),
            "labeled_embeddings": rng.normal(size=(5, d)), "mc_probs": mc,
            "rng": np.random.default_rng(seed)}


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_honours_the_contract(name):
    """Scores [N] finite (score strategies), budget distinct in-range indices, deterministic."""
    if name in STRATEGIES:
        scores = STRATEGIES[name](AcquisitionContext(**contract_inputs(0)))
        assert scores.shape == (60,) and np.isfinite(scores).all()
    for diversity in ("kmeans", "none"):
        first = acquire(budget=7, strategy=name, diversity=diversity, **contract_inputs(0))
        again = acquire(budget=7, strategy=name, diversity=diversity, **contract_inputs(0))
        assert first.dtype == np.int64 and len(first) == len(set(first.tolist())) == 7
        assert ((first >= 0) & (first < 60)).all()
        np.testing.assert_array_equal(first, again)
    assert len(acquire(budget=500, strategy=name, **contract_inputs(0))) == 60


# ---------------------------------------------------------------- the public entry point

def test_acquire_takes_plain_lists_and_returns_int64_best_first():
    got = acquire(PROBS.tolist(), 3, strategy="least-confidence")
    assert got.dtype == np.int64 and got.tolist() == [2, 4, 1]
    assert acquire(np.zeros((0, 3)), 4).tolist() == []


@pytest.mark.parametrize(("bad", "message"), [
    ({"probs": [0.2, 0.8]}, r"^probs must be a 2-D array \[N, C\] with C >= 2; got shape \(2,\)$"),
    ({"probs": [[1.0], [1.0]]}, r"with C >= 2; got shape \(2, 1\)$"),
    ({"probs": [[0.5, 0.6], [0.5, 0.5]]}, r"^probs rows must sum to 1; row 0 sums to 1.100000$"),
    ({"probs": [[np.nan, 1.0]]}, r"^probs must hold finite, non-negative probabilities$"),
    ({"embeddings": np.ones((5, 2)), "labeled_embeddings": np.ones((2, 3))},
     r"^labeled_embeddings must be finite with shape \(\*, 2\); got shape \(2, 3\)$"),
    ({"rng": "seven"}, r"^rng must be None, a non-negative integer seed or a numpy Generator; "
                       r"got 'seven'$"),
    ({"approx_above": -1}, r"^approx_above must be a non-negative integer; got -1$"),
    ({"candidate_factor": 0}, r"^candidate_factor must be a positive integer; got 0$"),
    ({"strategy": "entropie"}, r"^unknown acquisition strategy 'entropie'; valid: bald, coreset, "
                               r"entropy, least-confidence, margin, random, typiclust\. "
                               r"Did you mean 'entropy'\?$"),
])
def test_acquire_says_what_it_expected_and_what_it_got(bad, message):
    with pytest.raises(ValueError, match=message):
        acquire(**{"probs": PROBS, "budget": 2, **bad})


@pytest.fixture
def last_rows():
    """A score strategy registered as user code would, removed again after the test."""
    @register_strategy("last-rows")
    def last_rows(ctx: AcquisitionContext) -> np.ndarray:
        return np.arange(len(ctx.probs), dtype=np.float64)

    yield last_rows
    del STRATEGIES["last-rows"]


def test_a_registered_strategy_ranks_and_is_a_valid_config_value(last_rows):
    assert acquire(PROBS, 2, strategy="last-rows").tolist() == [4, 3]
    config = config_from_dict({"classes": ["A", "B"], "route": {"strategy": "last-rows"}})
    assert config.route.strategy == "last-rows"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"classes": ["A", "B"], "route": {"strategy": "last-row"}})
    assert str(info.value) == (
        "config key 'route.strategy': got 'last-row'; did you mean 'last-rows'? (allowed: margin, "
        "entropy, least-confidence, bald, coreset, typiclust, random, last-rows)")


def test_an_unregistered_strategy_is_refused_by_acquire_and_the_config():
    assert "last-rows" not in strategy_names()
    with pytest.raises(ValueError, match="unknown acquisition strategy 'last-rows'"):
        acquire(PROBS, 2, strategy="last-rows")
    with pytest.raises(ConfigError, match=r"got 'last-rows' \(allowed: margin, entropy, "
                                          r"least-confidence, bald, coreset, typiclust, random\)$"):
        config_from_dict({"classes": ["A", "B"], "route": {"strategy": "last-rows"}})


def test_a_batch_strategy_is_registered_apart_and_not_as_both_kinds(last_rows):
    with pytest.raises(ValueError, match="'last-rows' is already registered with batch=False"):
        register_strategy("last-rows", batch=True)(lambda ctx, budget: np.arange(budget))

    @register_strategy("first-rows", batch=True)
    def first_rows(ctx: AcquisitionContext, budget: int) -> np.ndarray:
        return np.arange(budget)

    try:
        assert acquire(PROBS, 3, strategy="first-rows", diversity="none").tolist() == [0, 1, 2]
        config = config_from_dict({"classes": ["A", "B"], "route": {"strategy": "first-rows"}})
        assert config.route.strategy == "first-rows"
    finally:
        del BATCH_STRATEGIES["first-rows"]
