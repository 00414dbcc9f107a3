"""What the pseudo-label policies and the acquisition strategies share: their registries' add and
unknown-name error, and the validation of arrays at a public entry point.

Each check raises `ValueError` stating what was expected and what was given; the registered
functions behind an entry point then trust their inputs.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable

import numpy as np

_SUM_ATOL = 1e-3  # float32 softmax rows drift from 1 by ~1e-6; 1e-3 catches real mistakes


def unknown(kind: str, name: object, valid: Iterable[str]) -> ValueError:
    """The error for a name no registry holds: the valid names, and the closest one if any."""
    valid = sorted(valid)
    hint = difflib.get_close_matches(str(name), valid, n=1)
    tip = f" Did you mean {hint[0]!r}?" if hint else ""
    return ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{tip}")


def register(registry: dict, name: str, fn: Callable) -> Callable:
    """Add ``fn`` under ``name``, warning (at the decorator's line) when it replaces one."""
    if name in registry:
        warnings.warn(f"overwriting registered {name!r}", RuntimeWarning, stacklevel=3)
    registry[name] = fn
    return fn


def check_probs(probs: object, name: str = "probs") -> np.ndarray:
    """``probs`` as a float64 [N, C] array (C >= 2) of finite, non-negative rows summing to 1."""
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


def check_vector(x: object, n: int, name: str, *, integer: bool = False) -> np.ndarray:
    """``x`` as a finite, non-negative [n] vector (int64 whole numbers if ``integer``)."""
    v = np.asarray(x)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {v.shape}")
    if v.size and (not np.isfinite(v.astype(np.float64)).all() or (v < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative; got {v.tolist()}")
    if integer and v.size and (v != np.round(v)).any():
        raise ValueError(f"{name} must hold whole numbers; got {v.tolist()}")
    return v.astype(np.int64 if integer else np.float64)


def check_array(x: object, name: str, expected: tuple, dtype: type = np.float32) -> np.ndarray:
    """``x`` as a finite array whose shape matches ``expected`` (None = any size)."""
    a = np.asarray(x, dtype=dtype)
    shape_ok = a.ndim == len(expected) and all(
        e in (None, s) for e, s in zip(expected, a.shape, strict=True))
    if not shape_ok or not np.isfinite(a).all():
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must be finite with shape ({want}); got shape {a.shape}")
    return a
