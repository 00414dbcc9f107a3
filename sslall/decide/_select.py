"""Which unlabeled cells get a pseudo label, and which go to a human: pure numpy over arrays.

Two registries of small pure functions, with the *measure* kept apart from the *selection*:

* `POLICIES`: ``fn(probs [N, C], *, threshold, labeled_counts [C]) -> thresholds [C]``, used by
  `select_pseudo_labels` (and `class_caps_from_prior` to keep the labeled class prior).
* `STRATEGIES`: ``fn(ctx) -> scores [N]``, higher = more worth a human label, turned into a batch
  by `select_top_k`; `BATCH_STRATEGIES`: ``fn(ctx, budget) -> indices`` for set-based methods
  (core-set, TypiClust) that need the budget. `acquire` dispatches over both.

Public entry points (`class_thresholds`, `select_pseudo_labels`, `class_caps_from_prior`,
`select_top_k`, `acquire`) validate once and raise `ValueError` stating expected vs actual;
registered functions trust their inputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sslall.decide._index import APPROX_ABOVE, k_center_greedy, kmeans, l2_normalize, typical_cluster_points

PolicyFn = Callable[..., np.ndarray]
ScoreFn = Callable[["AcquisitionContext"], np.ndarray]
BatchFn = Callable[["AcquisitionContext", int], np.ndarray]

POLICIES: dict[str, PolicyFn] = {}
STRATEGIES: dict[str, ScoreFn] = {}
BATCH_STRATEGIES: dict[str, BatchFn] = {}

_SUM_ATOL = 1e-3  # float32 softmax rows drift from 1 by ~1e-6; 1e-3 catches real mistakes
DIVERSITY = ("kmeans", "none")


def _unknown(kind: str, name: object, valid: list[str]) -> ValueError:
    hint = difflib.get_close_matches(str(name), valid, n=1)
    tip = f" Did you mean {hint[0]!r}?" if hint else ""
    return ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}.{tip}")


def _register(registry: dict, name: str, fn: Callable) -> Callable:
    if name in registry:
        warnings.warn(f"overwriting registered {name!r}", RuntimeWarning, stacklevel=3)
    registry[name] = fn
    return fn


def register_policy(name: str) -> Callable[[PolicyFn], PolicyFn]:
    """Decorator adding a pseudo-label threshold policy to `POLICIES` under ``name``."""
    return lambda fn: _register(POLICIES, name, fn)


def register_strategy(name: str, *, batch: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding an acquisition function: to `STRATEGIES`, or `BATCH_STRATEGIES` if batch."""
    def deco(fn: Callable) -> Callable:
        mine, other = (BATCH_STRATEGIES, STRATEGIES) if batch else (STRATEGIES, BATCH_STRATEGIES)
        if name in other:
            raise ValueError(f"strategy {name!r} is already registered with batch={not batch}")
        return _register(mine, name, fn)
    return deco


def strategy_names() -> list[str]:
    """Every acquisition strategy name, score-based and batch, sorted."""
    return sorted([*STRATEGIES, *BATCH_STRATEGIES])


def _check_probs(probs: object, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D array [N, C] with C >= 2; got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _SUM_ATOL)
    if bad.size:
        raise ValueError(f"{name} rows must sum to 1; row {bad[0]} sums to {sums[bad[0]]:.6f}")
    return p


def _check_vector(x: object, n: int, name: str, *, integer: bool = False) -> np.ndarray:
    v = np.asarray(x)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {v.shape}")
    if v.size and (not np.isfinite(v.astype(np.float64)).all() or (v < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative; got {v.tolist()}")
    if integer and v.size and (v != np.round(v)).any():
        raise ValueError(f"{name} must hold whole numbers; got {v.tolist()}")
    return v.astype(np.int64 if integer else np.float64)


@register_policy("fixed")
def fixed(probs: np.ndarray, *, threshold: float, labeled_counts: np.ndarray) -> np.ndarray:
    """One threshold for every class."""
    return np.full(probs.shape[1], float(threshold))


@register_policy("adaptive")
def adaptive(probs: np.ndarray, *, threshold: float, labeled_counts: np.ndarray,
             floor: float | None = None, warmup: bool = True) -> np.ndarray:
    """Class-wise thresholds from each class's learning status (FlexMatch-style).

    FlexMatch (Zhang et al., NeurIPS 2021, "FlexMatch: Boosting Semi-Supervised Learning with
    Curriculum Pseudo Labeling"), as also motivated by FreeMatch (Wang et al., ICLR 2023):

        sigma_c = #{unlabeled n : argmax p_n = c and max p_n >= tau}
        beta_c  = sigma_c / max(max_c' sigma_c', N - sum_c' sigma_c')   (warm-up; without
                  warm-up the denominator is max_c' sigma_c')
        T_c     = clip(M(beta_c) * tau, floor, tau),   M(x) = x / (2 - x)

    A class the model rarely predicts confidently (hard or rare) gets a lower threshold, so it
    is not starved of pseudo labels; no class goes above ``tau``. The warm-up term (the count of
    still-unconfident samples) keeps all thresholds low while most of the pool is unconfident.
    ``floor`` defaults to the midpoint between chance (1/C) and ``tau``: a max-probability below
    1/C is impossible, so a lower floor would accept every prediction of the class.
    ``labeled_counts`` is unused (the learning status is read from the unlabeled predictions).
    """
    n, c = probs.shape
    floor = min((1.0 / c + threshold) / 2.0 if floor is None else float(floor), threshold)
    if n == 0:
        return np.full(c, float(threshold))
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    sigma = np.bincount(pred[conf >= threshold], minlength=c).astype(np.float64)
    unused = n - sigma.sum() if warmup else 0.0
    denom = max(sigma.max(), unused)
    beta = sigma / denom if denom > 0 else np.zeros(c)
    return np.clip(beta / (2.0 - beta) * threshold, floor, threshold)


def class_thresholds(
    policy: str, probs: np.ndarray, *, threshold: float, labeled_counts: np.ndarray, **options
) -> np.ndarray:
    """Per-class thresholds [C] from the registered ``policy``, after validating the inputs."""
    if policy not in POLICIES:
        raise _unknown("pseudo-label policy", policy, list(POLICIES))
    p = _check_probs(probs)
    counts = _check_vector(labeled_counts, p.shape[1], "labeled_counts", integer=True)
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1); got {threshold}")
    return POLICIES[policy](p, threshold=float(threshold), labeled_counts=counts, **options)


def _confident(p: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    return conf, pred, conf >= thresholds[pred]


def confident_counts(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per-class count [C] of rows whose max probability reaches its class's threshold."""
    p = _check_probs(probs)
    t = _check_vector(thresholds, p.shape[1], "thresholds")
    _, pred, ok = _confident(p, t)
    return np.bincount(pred[ok], minlength=p.shape[1]).astype(np.int64)


def select_pseudo_labels(
    probs: np.ndarray, thresholds: np.ndarray, *, class_cap: np.ndarray | None = None
) -> np.ndarray:
    """Mask [N] of rows to pseudo-label: max p >= thresholds[argmax p], at most cap per class.

    With ``class_cap`` only the ``class_cap[c]`` most confident passing rows predicted as c are
    kept (ties to the lower index). The caller also uses this on current pseudo rows for
    self-correction: a pseudo row no longer selected goes back to unlabeled.
    """
    p = _check_probs(probs)
    c = p.shape[1]
    t = _check_vector(thresholds, c, "thresholds")
    if (t > 1).any():
        raise ValueError(f"thresholds must be in [0, 1]; got {t.tolist()}")
    conf, pred, mask = _confident(p, t)
    if class_cap is None:
        return mask
    cap = _check_vector(class_cap, c, "class_cap", integer=True)
    order = np.lexsort((np.arange(len(p)), -conf))  # most confident first, then by index
    passing = order[mask[order]]
    rank = np.zeros(len(p), np.int64)  # rank of each passing row within its predicted class
    for cls in range(c):
        rows = passing[pred[passing] == cls]
        rank[rows] = np.arange(len(rows))
    return mask & (rank < cap[pred])


def class_caps_from_prior(labeled_counts: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                          *, min_per_class: int = 1) -> np.ndarray:
    """Per-class caps [C] for `select_pseudo_labels` so pseudo labels follow the labeled prior.

    With prior pi_c = n_c / sum(n) and a_c rows confidently predicted as c (`confident_counts`),
    the largest batch that keeps the prior exactly is S = min_{c: n_c > 0} a_c / pi_c: the class
    with the fewest confident candidates relative to its prior limits the batch and gets all of
    them. Then ``cap_c = min(a_c, max(floor(pi_c * S), min_per_class))`` (integer arithmetic, so
    the limiting class loses nothing to rounding). ``min_per_class`` is a small floor that keeps
    the loop moving when some class has no confident candidate (S = 0) instead of capping every
    class to 0; it also applies to classes without labeled rows (pi_c = 0).
    """
    a = confident_counts(probs, thresholds)
    n = _check_vector(labeled_counts, a.size, "labeled_counts", integer=True)
    if n.sum() <= 0:
        raise ValueError(f"labeled_counts must have a positive total; got {n.tolist()}")
    if min_per_class < 0:
        raise ValueError(f"min_per_class must be >= 0; got {min_per_class}")
    seen = np.flatnonzero(n > 0)
    j = seen[0]  # argmin of a_c / n_c, by exact integer cross-multiplication
    for c in seen[1:]:
        if a[c] * n[j] < a[j] * n[c]:
            j = c
    proportional = (n * a[j]) // n[j]
    return np.minimum(a, np.maximum(proportional, min_per_class)).astype(np.int64)


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
        raise ValueError(f"strategy {strategy!r} needs ctx.{what}; got None")
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


def _top_k(scores: np.ndarray, budget: int, emb: np.ndarray | None, factor: int) -> np.ndarray:
    order = np.lexsort((np.arange(len(scores)), -scores))  # descending score, ties by index
    m = min(len(scores), factor * budget)
    if emb is None or m <= budget:
        return order[:budget]
    cand = order[:m]
    x = l2_normalize(emb[cand])
    # farthest-first seeds: a clump of near-duplicates gets one seed, not several
    _, assign = kmeans(x, budget, seed=0, init=x[k_center_greedy(x, None, budget)])
    _, first = np.unique(assign, return_index=True)  # best-ranked candidate of each cluster
    chosen = np.zeros(m, bool)
    chosen[first] = True
    if chosen.sum() < budget:  # fewer non-empty clusters than budget: fill by rank
        chosen[np.flatnonzero(~chosen)[: budget - chosen.sum()]] = True
    return cand[chosen]


def select_top_k(scores: np.ndarray, budget: int, *, embeddings: np.ndarray | None = None,
                 diversity: str = "kmeans", candidate_factor: int = 10) -> np.ndarray:
    """Indices of a ``budget``-sized batch by descending score, optionally spread by k-means.

    With ``diversity="kmeans"`` and embeddings, the top ``candidate_factor * budget`` candidates
    are clustered into ``budget`` clusters and the best-scoring candidate of each is taken, so a
    batch is not fifty near-identical cells. Returned in descending score (ties by index).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise ValueError(f"scores must be a finite 1-D array; got shape {s.shape}")
    _check_budget(budget, diversity, candidate_factor)
    emb = None
    if embeddings is not None and diversity == "kmeans":
        emb = _check_array(embeddings, "embeddings", (len(s), None))
    return _top_k(s, min(budget, len(s)), emb, candidate_factor)


def _check_budget(budget: int, diversity: str, candidate_factor: int) -> None:
    for name, v in (("budget", budget), ("candidate_factor", candidate_factor)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if diversity not in DIVERSITY:
        raise _unknown("diversity", diversity, list(DIVERSITY))


def _check_array(x: object, name: str, expected: tuple, dtype: type = np.float32) -> np.ndarray:
    """``x`` as a finite array whose shape matches ``expected`` (None = any size)."""
    a = np.asarray(x, dtype=dtype)
    shape_ok = a.ndim == len(expected) and all(
        e in (None, s) for e, s in zip(expected, a.shape, strict=True))
    if not shape_ok or not np.isfinite(a).all():
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must be finite with shape ({want}); got shape {a.shape}")
    return a


def _check_context(ctx: AcquisitionContext) -> AcquisitionContext:
    p = _check_probs(ctx.probs, "ctx.probs")
    emb = lab = mc = None
    if ctx.embeddings is not None:
        emb = _check_array(ctx.embeddings, "ctx.embeddings", (len(p), None))
    if ctx.labeled_embeddings is not None:
        d = None if emb is None else emb.shape[1]
        lab = _check_array(ctx.labeled_embeddings, "ctx.labeled_embeddings", (None, d))
    if ctx.mc_probs is not None:
        mc = _check_array(ctx.mc_probs, "ctx.mc_probs", (None, *p.shape), np.float64)
        _check_probs(mc.reshape(-1, p.shape[1]), "ctx.mc_probs")
    if not isinstance(ctx.rng, np.random.Generator):
        raise ValueError(f"ctx.rng must be a numpy Generator; got {type(ctx.rng).__name__}")
    return dataclasses.replace(ctx, probs=p, embeddings=emb, labeled_embeddings=lab, mc_probs=mc)


def acquire(strategy: str, budget: int, ctx: AcquisitionContext, *, diversity: str = "kmeans",
            candidate_factor: int = 10) -> np.ndarray:
    """Indices [min(budget, N)] of the cells most worth a human label under ``strategy``.

    Score strategies rank by score and go through `select_top_k` (``diversity`` applies when
    ``ctx.embeddings`` is given); batch strategies (coreset, typiclust) choose the set
    themselves and ignore ``diversity``. Unknown names raise ValueError listing the valid ones.
    """
    if strategy not in STRATEGIES and strategy not in BATCH_STRATEGIES:
        raise _unknown("acquisition strategy", strategy, strategy_names())
    _check_budget(budget, diversity, candidate_factor)
    ctx = _check_context(ctx)
    budget = min(int(budget), len(ctx.probs))
    if budget == 0:
        return np.zeros(0, np.int64)
    if strategy in BATCH_STRATEGIES:
        return np.asarray(BATCH_STRATEGIES[strategy](ctx, budget), dtype=np.int64)
    scores = np.asarray(STRATEGIES[strategy](ctx), dtype=np.float64)
    emb = ctx.embeddings if diversity == "kmeans" else None
    return _top_k(scores, budget, emb, candidate_factor).astype(np.int64)
