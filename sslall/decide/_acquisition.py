"""Which unlabeled cells go to a human: acquisition strategies, pure numpy (+ faiss) over arrays.

Two registries of small pure functions, with the *measure* kept apart from the *selection*:
`STRATEGIES` maps a name to ``fn(ctx) -> scores [N]``, higher = more worth a human label, turned
into a batch by `select_top_k` (diversity only among the top of the ranking, `diversity_split`);
`BATCH_STRATEGIES` maps a name to ``fn(ctx, budget) -> indices`` for set-based methods
(core-set, TypiClust) that need the budget. `acquire` is the entry point
over both: arrays in, row indices out, validated once (`ValueError` stating expected vs actual);
registered functions trust their inputs. The config's `route.strategy` accepts every registered
name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from sslall._settings import set_name_source
from sslall.decide._checks import check_array, check_probs, register, unknown
from sslall.decide._index import APPROX_ABOVE, k_center_greedy, kmeans, l2_normalize, typical_cluster_points

ScoreFn = Callable[["AcquisitionContext"], np.ndarray]
BatchFn = Callable[["AcquisitionContext", int], np.ndarray]

STRATEGIES: dict[str, ScoreFn] = {}
BATCH_STRATEGIES: dict[str, BatchFn] = {}
DIVERSITY = ("kmeans", "none")


def strategy_names() -> list[str]:
    """Every acquisition strategy name, score-based and batch, sorted."""
    return sorted([*STRATEGIES, *BATCH_STRATEGIES])


set_name_source("strategy", strategy_names)


def register_strategy(name: str, *, batch: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding an acquisition function: to `STRATEGIES`, or `BATCH_STRATEGIES` if batch.

    A score function is called as ``fn(ctx)`` with a validated `AcquisitionContext` and returns
    scores [N] (higher = more worth a label); a batch function, ``fn(ctx, budget)``, returns the
    chosen row indices. Once registered, the name works in `acquire`, `route.strategy` and
    ``--strategy``. Replacing a registered name warns.

    Raises:
        ValueError: ``name`` is already registered as the other kind (score vs batch).

    Example:
        >>> @register_strategy("top-class-rare")
        ... def top_class_rare(ctx):
        ...     return -ctx.probs.max(axis=1)
    """
    def deco(fn: Callable) -> Callable:
        mine, other = (BATCH_STRATEGIES, STRATEGIES) if batch else (STRATEGIES, BATCH_STRATEGIES)
        if name in other:
            raise ValueError(f"strategy {name!r} is already registered with batch={not batch}")
        return register(mine, name, fn)
    return deco


@dataclass
class AcquisitionContext:
    """What an acquisition function may look at; index i is the same cell everywhere.

    probs [N, C] calibrated probabilities; embeddings [N, D] of the same cells;
    labeled_embeddings [M, D] of the labeled cells; mc_probs [T, N, C] Monte-Carlo dropout
    samples (for BALD); rng for the `random` strategy; approx_above: kNN searches over more
    labeled rows than this use an approximate index (config `index.approx_above`).
    """

    probs: np.ndarray
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    approx_above: int = APPROX_ABOVE


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def _need(value: np.ndarray | None, strategy: str, what: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs {what}; got None")
    return value


@register_strategy("least-confidence")
def least_confidence(ctx: AcquisitionContext) -> np.ndarray:
    """1 - max p: the model's doubt about its own top guess."""
    return 1.0 - ctx.probs.max(axis=1)


@register_strategy("margin")
def margin(ctx: AcquisitionContext) -> np.ndarray:
    """-(p1 - p2): a small gap between the two best classes scores high."""
    top2 = np.sort(ctx.probs, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


@register_strategy("entropy")
def entropy(ctx: AcquisitionContext) -> np.ndarray:
    """Shannon entropy of the predictive distribution (nats)."""
    return _entropy(ctx.probs)


@register_strategy("bald")
def bald(ctx: AcquisitionContext) -> np.ndarray:
    """Mutual information between label and weights (Houlsby et al. 2011; Gal et al. 2017).

    H[mean_t p_t] - mean_t H[p_t] over Monte-Carlo samples ``ctx.mc_probs`` [T, N, C]: high
    when the samples disagree (epistemic), low when they agree even on a flat distribution.
    """
    mc = _need(ctx.mc_probs, "bald", "mc_probs [T, N, C]")
    return np.maximum(_entropy(mc.mean(axis=0)) - _entropy(mc).mean(axis=0), 0.0)


@register_strategy("random")
def random_scores(ctx: AcquisitionContext) -> np.ndarray:
    """Uniform random scores from ``ctx.rng``: the baseline every strategy must beat."""
    return ctx.rng.random(len(ctx.probs))


@register_strategy("coreset", batch=True)
def coreset(ctx: AcquisitionContext, budget: int) -> np.ndarray:
    """Greedy k-center over embeddings with the labeled cells as centres (Sener & Savarese 2018)."""
    emb = _need(ctx.embeddings, "coreset", "embeddings [N, D]")
    return k_center_greedy(emb, ctx.labeled_embeddings, budget, approx_above=ctx.approx_above)


@register_strategy("typiclust", batch=True)
def typiclust(ctx: AcquisitionContext, budget: int) -> np.ndarray:
    """TypiClust (Hacohen et al. 2022): the most typical cell of each uncovered k-means cluster."""
    emb = _need(ctx.embeddings, "typiclust", "embeddings [N, D]")
    return typical_cluster_points(emb, ctx.labeled_embeddings, budget)


def diversity_split(n: int, budget: int, factor: int) -> tuple[int, int]:
    """(taken by rank, picked by diversity) for ``budget`` of ``n`` ranked candidates.

    Diversity picks ``k`` cells among the ``factor * k`` candidates ranked right after the
    ``budget - k`` taken outright, so a low-score cell can displace a higher one only inside a
    slice ``factor`` times the number of picks. ``k = budget`` when the pool holds
    ``factor * budget`` candidates; a smaller pool gets fewer picks, never a wider slice (30
    candidates, budget 20, factor 3: the top 15 by rank, then 5 picks among ranks 16-30).
    """
    budget = min(budget, n)
    if factor <= 1 or budget <= 1:
        return budget, 0
    k = min(budget, (n - budget) // (factor - 1))
    return (budget, 0) if k <= 1 else (budget - k, k)


def _top_k(scores: np.ndarray, budget: int, emb: np.ndarray | None, factor: int) -> np.ndarray:
    order = np.lexsort((np.arange(len(scores)), -scores))  # descending score, ties by index
    head, k = diversity_split(len(scores), budget, factor)
    if emb is None or k == 0:
        return order[:budget]
    cand = order[head:head + factor * k]
    x = l2_normalize(emb[cand])
    # farthest-first seeds: a clump of near-duplicates gets one seed, not several
    _, assign = kmeans(x, k, seed=0, init=x[k_center_greedy(x, None, k)])
    _, first = np.unique(assign, return_index=True)  # best-ranked candidate of each cluster
    chosen = np.zeros(len(cand), bool)
    chosen[first] = True
    if chosen.sum() < k:  # fewer non-empty clusters than picks: fill by rank
        chosen[np.flatnonzero(~chosen)[: k - chosen.sum()]] = True
    return np.concatenate([order[:head], cand[chosen]])


def select_top_k(scores: np.ndarray, budget: int, *, embeddings: np.ndarray | None = None,
                 diversity: str = "kmeans", candidate_factor: int = 3) -> np.ndarray:
    """Indices of a ``budget``-sized batch by descending score, optionally spread by k-means.

    With ``diversity="kmeans"`` and embeddings, diversity acts only among the top of the
    ranking: the best ``candidate_factor * budget`` candidates are clustered into ``budget``
    clusters and the best-scoring candidate of each is taken, so a batch is not fifty
    near-identical cells; a pool smaller than that gets fewer diversity picks, never a wider
    slice (see `diversity_split`). Returned in descending score (ties by index).

    Raises:
        ValueError: scores not a finite 1-D array, a bad budget, factor, diversity or
            embeddings shape.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise ValueError(f"scores must be a finite 1-D array; got shape {s.shape}")
    _check_budget(budget, diversity, candidate_factor)
    emb = None
    if embeddings is not None and diversity == "kmeans":
        emb = check_array(embeddings, "embeddings", (len(s), None))
    return _top_k(s, min(budget, len(s)), emb, candidate_factor)


def _check_budget(budget: int, diversity: str, candidate_factor: int) -> None:
    for name, v in (("budget", budget), ("candidate_factor", candidate_factor)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if diversity not in DIVERSITY:
        raise unknown("diversity", diversity, DIVERSITY)



def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be None, a non-negative integer seed or a numpy Generator; "
                     f"got {rng!r}")


def _context(probs: ArrayLike, embeddings: ArrayLike | None, labeled_embeddings: ArrayLike | None,
             mc_probs: ArrayLike | None, rng: np.random.Generator | int | None,
             approx_above: int) -> AcquisitionContext:
    """The validated arrays as the context every registered strategy receives."""
    p = check_probs(probs)
    emb = lab = mc = None
    if embeddings is not None:
        emb = check_array(embeddings, "embeddings", (len(p), None))
    if labeled_embeddings is not None:
        d = None if emb is None else emb.shape[1]
        lab = check_array(labeled_embeddings, "labeled_embeddings", (None, d))
    if mc_probs is not None:
        mc = check_array(mc_probs, "mc_probs", (None, *p.shape), np.float64)
        check_probs(mc.reshape(-1, p.shape[1]), "mc_probs")
    if isinstance(approx_above, bool) or not isinstance(approx_above, (int, np.integer)) \
            or approx_above < 0:
        raise ValueError(f"approx_above must be a non-negative integer; got {approx_above!r}")
    return AcquisitionContext(p, emb, lab, mc, _generator(rng), int(approx_above))


def acquire(probs: ArrayLike, budget: int, *, strategy: str = "margin",
            embeddings: ArrayLike | None = None, labeled_embeddings: ArrayLike | None = None,
            mc_probs: ArrayLike | None = None, diversity: str = "kmeans",
            rng: np.random.Generator | int | None = None, candidate_factor: int = 3,
            approx_above: int = APPROX_ABOVE) -> np.ndarray:
    """Row indices of the ``budget`` rows of ``probs`` most worth a human label, best first.

    Score strategies (margin, entropy, least-confidence, bald, random) rank the rows by score;
    with ``embeddings`` and ``diversity="kmeans"`` the best ``candidate_factor * budget`` rows
    are clustered into ``budget`` clusters and the best row of each is taken, so a batch is not
    a clump of near-duplicates; diversity never reaches below that slice of the ranking (a
    smaller pool gets fewer diversity picks, see `diversity_split`). Batch strategies (coreset,
    typiclust) choose the set from the embeddings themselves and ignore ``diversity``. A name
    added with `register_strategy` works the same way. A round calls this with the config's
    `route.strategy`, `route.diversity` and `route.candidate_factor`.

    Args:
        probs: [N, C] calibrated class probabilities, each row summing to 1.
        budget: how many rows to pick (at most N are returned).
        strategy: a registered strategy name.
        embeddings: [N, D] features of the same rows; needed by coreset and typiclust, and
            by ``diversity="kmeans"`` (without them a score strategy takes the top scores).
        labeled_embeddings: [M, D] features of already labeled rows, which coreset and
            typiclust count as covered.
        mc_probs: [T, N, C] Monte-Carlo dropout samples of ``probs``; needed by bald.
        diversity: ``"kmeans"`` or ``"none"``.
        rng: a numpy Generator or an integer seed, for the random strategy; None means seed 0,
            so that two calls give the same batch.
        candidate_factor: with k-means diversity, how many top-ranked rows each pick is
            chosen among (1 = plain ranking).
        approx_above: kNN searches over more labeled rows than this use an approximate index.

    Returns:
        int64 array of min(budget, N) distinct row indices: by descending score (ties by row
        index) for score strategies, in the order picked for batch strategies.

    Raises:
        ValueError: an unknown strategy or diversity (the message lists the valid names and
            the closest one), a budget that is not a positive integer, an array of the wrong
            shape or with non-finite values, probability rows that do not sum to 1, a bad
            ``rng``, or an input the strategy needs left out (bald without ``mc_probs``).

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.7, 0.3]])
        >>> acquire(probs, 2, strategy="margin").tolist()
        [1, 2]
    """
    return acquire_scored(probs, budget, strategy=strategy, embeddings=embeddings,
                          labeled_embeddings=labeled_embeddings, mc_probs=mc_probs,
                          diversity=diversity, rng=rng, candidate_factor=candidate_factor,
                          approx_above=approx_above)[0]


def acquire_scored(probs: ArrayLike, budget: int, *, strategy: str = "margin",
                   embeddings: ArrayLike | None = None, labeled_embeddings: ArrayLike | None = None,
                   mc_probs: ArrayLike | None = None, diversity: str = "kmeans",
                   rng: np.random.Generator | int | None = None, candidate_factor: int = 3,
                   approx_above: int = APPROX_ABOVE) -> tuple[np.ndarray, np.ndarray | None]:
    """`acquire`, plus the strategy's score of every row (None for a batch strategy).

    A round states each routed cell's score and rank in its move's reason from these.

    Raises:
        ValueError: as `acquire`.
    """
    if strategy not in STRATEGIES and strategy not in BATCH_STRATEGIES:
        raise unknown("acquisition strategy", strategy, strategy_names())
    _check_budget(budget, diversity, candidate_factor)
    ctx = _context(probs, embeddings, labeled_embeddings, mc_probs, rng, approx_above)
    budget = min(int(budget), len(ctx.probs))
    if strategy in BATCH_STRATEGIES:
        if budget == 0:
            return np.zeros(0, np.int64), None
        return np.asarray(BATCH_STRATEGIES[strategy](ctx, budget), dtype=np.int64), None
    scores = np.asarray(STRATEGIES[strategy](ctx), dtype=np.float64)
    if budget == 0:
        return np.zeros(0, np.int64), scores
    emb = ctx.embeddings if diversity == "kmeans" else None
    return _top_k(scores, budget, emb, candidate_factor).astype(np.int64), scores
