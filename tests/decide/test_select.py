"""sslall.decide._select: exact thresholds, masks, caps and rankings on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from sslall.config import CHOICES
from sslall.decide._select import (
    BATCH_STRATEGIES,
    POLICIES,
    STRATEGIES,
    AcquisitionContext,
    acquire,
    class_caps_from_prior,
    class_thresholds,
    confident_counts,
    select_pseudo_labels,
    select_top_k,
    strategy_names,
)

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


def ranking(strategy: str, **ctx) -> list[int]:
    context = AcquisitionContext(probs=PROBS, **ctx)
    return acquire(strategy, len(PROBS), context, diversity="none").tolist()


def test_registries_match_config_choices():
    assert set(strategy_names()) == set(CHOICES["route.strategy"])
    assert set(POLICIES) == set(CHOICES["pseudo.policy"])
    assert set(BATCH_STRATEGIES) == {"coreset", "typiclust"}
    assert not set(STRATEGIES) & set(BATCH_STRATEGIES)


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
    assert acquire("bald", 4, ctx, diversity="none").tolist() == [0, 3, 1, 2]
    # entropy would put the aleatoric cell 2 first (tied with 0); BALD puts it last
    assert acquire("entropy", 4, ctx, diversity="none").tolist()[:2] == [0, 2]


def test_bald_needs_mc_probs():
    with pytest.raises(ValueError, match=r"'bald' needs ctx.mc_probs \[T, N, C\]"):
        acquire("bald", 2, AcquisitionContext(PROBS))
    with pytest.raises(ValueError, match=r"ctx.mc_probs must be finite with shape \(\*, 5, 3\)"):
        acquire("bald", 2, AcquisitionContext(PROBS, mc_probs=MC))


def test_random_follows_the_rng():
    a = acquire("random", 3, AcquisitionContext(PROBS, rng=np.random.default_rng(7)))
    b = acquire("random", 3, AcquisitionContext(PROBS, rng=np.random.default_rng(7)))
    want = np.argsort(-np.random.default_rng(7).random(5), kind="stable")[:3]
    assert a.tolist() == b.tolist() == want.tolist()


def test_coreset_picks_the_far_point():
    pool = np.array([[1.0, 0.02], [1.0, -0.02], [0.0, 1.0], [1.0, 0.05], [0.7, 0.7]])
    ctx = AcquisitionContext(probs=np.full((5, 2), 0.5), embeddings=pool,
                             labeled_embeddings=np.array([[1.0, 0.0]]))
    assert acquire("coreset", 2, ctx).tolist() == [2, 4]


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
    ctx = AcquisitionContext(probs=np.full((36, 2), 0.5), embeddings=emb)
    picks = acquire("typiclust", 3, ctx)
    assert sorted(p // 12 for p in picks) == [0, 1, 2]
    assert all(p % 12 < 8 for p in picks)  # from the dense core, not the fringe
    ctx.labeled_embeddings = np.eye(6)[1:2]  # blob 1 is already covered by a labeled cell
    assert sorted(p // 12 for p in acquire("typiclust", 2, ctx)) == [0, 2]


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
    spread = select_top_k(scores, 5, embeddings=emb, candidate_factor=20)
    assert spread[0] == 0  # best twin first, in descending score
    group = [0 if i < 50 else 1 + (i - 50) // 10 for i in spread]
    assert sorted(group) == [0, 1, 2, 3, 4]
    assert spread.tolist()[1:] == [50, 60, 70, 80]  # best of each other cluster
    np.testing.assert_array_equal(np.sort(scores[spread])[::-1], scores[spread])


def test_top_k_ties_by_index_and_budget_bounds():
    assert select_top_k(np.array([1.0, 2.0, 2.0, 1.0]), 3, diversity="none").tolist() == [1, 2, 0]
    ctx = AcquisitionContext(PROBS, embeddings=np.eye(5))
    assert sorted(acquire("margin", 99, ctx).tolist()) == [0, 1, 2, 3, 4]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="budget must be a positive integer"):
            acquire("margin", bad, ctx)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown acquisition strategy 'margn'; valid: bald, "
                                         r"coreset, entropy.*Did you mean 'margin'\?"):
        acquire("margn", 3, AcquisitionContext(PROBS))
    with pytest.raises(ValueError, match="unknown diversity 'dpp'; valid: kmeans, none"):
        acquire("margin", 3, AcquisitionContext(PROBS), diversity="dpp")
    with pytest.raises(ValueError, match=r"ctx.embeddings must be finite with shape \(5, \*\)"):
        acquire("margin", 3, AcquisitionContext(PROBS, embeddings=np.ones((4, 2))))


def contract_ctx(seed: int) -> AcquisitionContext:
    rng = np.random.default_rng(123)
    n, c, d = 60, 3, 8
    logits = rng.normal(0, 2, (n, c))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mc_logits = logits + rng.normal(0, 1, (4, n, c))
    mc = np.exp(mc_logits) / np.exp(mc_logits).sum(axis=2, keepdims=True)
    return AcquisitionContext(probs=probs, embeddings=rng.normal(size=(n, d)),
                              labeled_embeddings=rng.normal(size=(5, d)), mc_probs=mc,
                              rng=np.random.default_rng(seed))


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_honours_the_contract(name):
    """Scores [N] finite (score strategies), budget distinct in-range indices, deterministic."""
    if name in STRATEGIES:
        scores = STRATEGIES[name](contract_ctx(0))
        assert scores.shape == (60,) and np.isfinite(scores).all()
    for diversity in ("kmeans", "none"):
        first = acquire(name, 7, contract_ctx(0), diversity=diversity)
        again = acquire(name, 7, contract_ctx(0), diversity=diversity)
        assert first.dtype == np.int64 and len(first) == len(set(first.tolist())) == 7
        assert ((first >= 0) & (first < 60)).all()
        np.testing.assert_array_equal(first, again)
    assert len(acquire(name, 500, contract_ctx(0))) == 60
