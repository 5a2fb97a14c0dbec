"""The one conservative search every calibration uses.

Each calibration inverts a monotone function of one parameter (δ(ε; μ) in μ or in ε, a
plan's total in its scale) and must land on the private side of the root, never a rounding
step beyond it. Two moves do that:

* :func:`bisect` brackets the root and halves the bracket until its midpoint equals an end,
  keeping both ends: the caller returns the end on the private side. It runs elementwise on
  arrays, so one call solves many independent problems (a plan's distinct μ) on the same
  path a scalar call would take.
* :func:`nudge` moves a computed value away from the root until a direct check passes: the
  last step after a closed-form or bisected value whose rounding (Δ/μ, a product of shares)
  could cross it. The step starts at one ulp (or a given size) and doubles, so an extreme
  input cannot loop for long.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, overload

import numpy as np

__all__ = ["bisect", "nudge"]

#: Halvings after the bracket is found: more than the 2·1074 + 53 a float64 interval can
#: take only for brackets no calibration here produces; the midpoint test ends sooner.
BISECT_STEPS = 200
NUDGE_STEPS = 200


@overload
def bisect(
    below: Callable[[float], bool], lo: float, hi: float, *, max_hi: float = ...
) -> tuple[float, float]: ...


@overload
def bisect(
    below: Callable[[np.ndarray], np.ndarray], lo: float | np.ndarray, hi: float | np.ndarray, *, max_hi: float = ...
) -> tuple[np.ndarray, np.ndarray]: ...


def bisect(
    below: Callable[[Any], Any],  # float -> bool, or ndarray -> bool ndarray (see the overloads)
    lo: float | np.ndarray,
    hi: float | np.ndarray,
    *,
    max_hi: float = math.inf,
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Bracket and bisect the boundary of a monotone predicate, elementwise.

    Parameters
    ----------
    below : callable
        Maps an array of candidate values x (the shape of ``lo``) to a boolean array:
        whether x lies below the boundary (true for small x, false from the root on).
    lo, hi : float or ndarray
        A start bracket with ``below(lo)`` true. While ``below(hi)`` holds, the bracket
        moves up (lo ← hi, hi ← 2·hi).
    max_hi : float
        Refuse (``ValueError``) a bracket that has to grow past this.

    Returns
    -------
    (lo, hi) : ndarray, ndarray (floats for float ``lo`` and ``hi``)
        ``below(lo)`` true, ``below(hi)`` false, and no float64 strictly between them at
        which the midpoint could still be evaluated. A caller on the private side at the
        small end returns ``lo``; one on the private side at the large end returns ``hi``.

    Float ``lo`` and ``hi`` take the same steps in plain Python (``below`` then gets and
    returns scalars): a calibration calls this on every release, and NumPy's per-call cost
    would be most of its time.
    """
    if isinstance(lo, float) and isinstance(hi, float):
        return _bisect_scalar(below, lo, hi, max_hi)
    lo, hi = (np.array(x, dtype=float) for x in np.broadcast_arrays(lo, hi))
    while True:
        up = np.asarray(below(hi), dtype=bool)
        if not up.any():
            break
        lo, hi = np.where(up, hi, lo), np.where(up, 2.0 * hi, hi)
        if (hi > max_hi).any():
            raise ValueError(f"the boundary lies above {max_hi!r}: no usable bracket")
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        live = (mid > lo) & (mid < hi)
        if not live.any():
            break
        b = np.asarray(below(mid), dtype=bool)
        lo = np.where(live & b, mid, lo)
        hi = np.where(live & ~b, mid, hi)
    return lo, hi


def _bisect_scalar(below: Callable[[float], bool], lo: float, hi: float, max_hi: float) -> tuple[float, float]:
    """:func:`bisect` for one problem: the same bracket, the same halvings."""
    while below(hi):
        lo, hi = hi, 2.0 * hi
        if hi > max_hi:
            raise ValueError(f"the boundary lies above {max_hi!r}: no usable bracket")
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if below(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def nudge(
    ok: Callable[[float], bool],
    x: float,
    direction: float,
    *,
    first_step: float | None = None,
    limit: float | None = None,
) -> float:
    """``x`` itself if ``ok(x)``, else x moved in ``direction`` (+1 or −1) until ``ok`` holds.

    The step starts at ``first_step`` (default: one ulp of x in that direction) and
    doubles; x never passes ``limit`` (it stops there, and ``limit`` is returned if it
    passes the check). Raises ``ValueError`` when nothing within 200 steps passes.
    """
    step: float | None = None
    for _ in range(NUDGE_STEPS):
        if ok(x):
            return x
        ulp = abs(math.nextafter(x, direction * math.inf) - x)
        step = (ulp if first_step is None else max(first_step, ulp)) if step is None else max(2.0 * step, ulp)
        x = x + direction * step
        if limit is not None and (x - limit) * direction >= 0.0:
            if ok(limit):
                return limit
            break
        if not math.isfinite(x):
            break
    raise ValueError("no value within reach satisfies the check in floating point")
