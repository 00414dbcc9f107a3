"""Which unlabeled cells get a pseudo label: class-wise threshold policies, pure numpy over arrays.

`POLICIES` maps a name to ``fn(probs [N, C], *, threshold, labeled_counts [C]) -> thresholds [C]``
(add one with `register_policy`; the config's `pseudo.policy` accepts every registered name).
`class_thresholds` runs a policy, `select_pseudo_labels` keeps the rows that reach their class's
threshold (at most a cap per class) and `class_caps_from_prior` sizes the caps so pseudo labels
follow the labeled class prior. These entry points validate once and raise `ValueError` stating
expected vs actual; registered functions trust their inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sslall._settings import set_name_source
from sslall.decide._checks import check_probs, check_vector, register, unknown

PolicyFn = Callable[..., np.ndarray]

POLICIES: dict[str, PolicyFn] = {}
set_name_source("policy", lambda: POLICIES)


def register_policy(name: str) -> Callable[[PolicyFn], PolicyFn]:
    """Decorator adding a pseudo-label threshold policy to `POLICIES` under ``name``.

    The function is called as ``fn(probs [N, C], *, threshold, labeled_counts [C], **options)``
    with validated arrays and returns one threshold per class; once registered, its name is a
    valid `pseudo.policy` and ``--policy``. Replacing a registered name warns.

    Example:
        >>> @register_policy("strict")
        ... def strict(probs, *, threshold, labeled_counts):
        ...     return np.full(probs.shape[1], max(threshold, 0.99))
    """
    return lambda fn: register(POLICIES, name, fn)


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


@register_policy("propagation")
def propagation(probs: np.ndarray, *, threshold: float, labeled_counts: np.ndarray) -> np.ndarray:
    """One threshold for every class, on propagated class distributions: the round passes the
    label-propagation scores as ``probs`` (`sslall.decide._route`, `sslall.decide._propagation`)."""
    return np.full(probs.shape[1], float(threshold))


def class_thresholds(
    policy: str, probs: np.ndarray, *, threshold: float, labeled_counts: np.ndarray, **options
) -> np.ndarray:
    """Per-class thresholds [C] from the registered ``policy``, after validating the inputs."""
    if policy not in POLICIES:
        raise unknown("pseudo-label policy", policy, POLICIES)
    p = check_probs(probs)
    counts = check_vector(labeled_counts, p.shape[1], "labeled_counts", integer=True)
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1); got {threshold}")
    return POLICIES[policy](p, threshold=float(threshold), labeled_counts=counts, **options)


def _confident(p: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    return conf, pred, conf >= thresholds[pred]


def confident_counts(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per-class count [C] of rows whose max probability reaches its class's threshold."""
    p = check_probs(probs)
    t = check_vector(thresholds, p.shape[1], "thresholds")
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
    p = check_probs(probs)
    c = p.shape[1]
    t = check_vector(thresholds, c, "thresholds")
    if (t > 1).any():
        raise ValueError(f"thresholds must be in [0, 1]; got {t.tolist()}")
    conf, pred, mask = _confident(p, t)
    if class_cap is None:
        return mask
    cap = check_vector(class_cap, c, "class_cap", integer=True)
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
    n = check_vector(labeled_counts, a.size, "labeled_counts", integer=True)
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
