"""Gaussian differential privacy: the δ(ε) curve of μ-GDP, its inverses, and composition.

A Gaussian mechanism with L2 sensitivity Δ and noise scale σ is μ-GDP with μ = Δ/σ
(Dong, Roth & Su 2019, arXiv:1905.02383, Thm 2.7), μ-GDP mechanisms compose as
μ = √(Σ μᵢ²) (ibid., Cor. 3.3), and μ-GDP is (ε, δ)-DP exactly when

    δ(ε; μ) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ) ≤ δ

(Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy",
arXiv:1805.06530, Thm 8; the same curve is Dong–Roth–Su Cor. 2.13). δ(ε; μ) is strictly
increasing in μ and strictly decreasing in ε, so both inversions are one
:func:`~dplowrank.privacy._search.bisect`, each returning the end of its bracket on the
private side. Every function here errs on the side of privacy: δ is padded upwards, ε is
read back upwards, μ downwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
from scipy.special import erfcx, log_ndtr

from .._validation import check_delta, check_epsilon
from ._search import bisect

__all__ = [
    "DELTA_SAFETY",
    "EPS_SLACK",
    "gdp_delta",
    "gdp_delta_many",
    "gdp_epsilon",
    "gdp_epsilon_many",
    "gdp_mu",
    "count_as_float",
    "sum_mu2",
]

#: gdp_delta returns the computed curve times this, an upper bound on the exact value: against
#: mpmath (80 digits) its float64 evaluation is within about 1e-11 (relative) of the exact δ,
#: tiny ε and δ included (see gdp_delta; tests/test_calibration.py checks it).
DELTA_SAFETY = 1.0 + 1e-7
#: Calibrations aim at ε·(1 − 1e-9): near its root the computed δ(ε) is not monotone to the
#: last bits, so ε read back by bisection (``gdp_epsilon``) could land a few ulps above an ε
#: calibrated exactly at the edge; the slack keeps the reported ε at or below the target.
EPS_SLACK = 1e-9


#: Gauss–Legendre rule (8 nodes on [−1, 1]) for the difference of two nearby erfcx values.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_SQRT2 = math.sqrt(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
#: The smallest positive float64: returned instead of a δ that underflowed to zero.
_TINY = 5e-324
#: From A = μ/2 − ε/μ = 26 on, δ = Φ(A) − e^ε Φ(B) is taken in the log-Φ form (below it the
#: erfcx form, whose erfcx(−A/√2) ≈ 2e^(A²/2) would overflow from A ≈ 37.6).
_HEAD_FROM = 26.0
#: Above this, μ/2 + ε/μ is large enough for the float difference A = μ/2 − ε/μ to lose
#: more than the padding: A is computed in rationals (see _big_a).
_EXACT_A_FROM = 1e6
_SMALLEST_NORMAL = 2.2250738585072014e-308
#: erfcx values are subtracted directly when h > this·(1 + |x|) (error ≲ 2e-12 relative).
_DIRECT_FROM = 1e-4


def _check_curve_args(mu: float, epsilon: float) -> None:
    if not mu >= 0.0:  # also NaN
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    if not epsilon >= 0.0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")


def gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of a μ-GDP mechanism (Balle & Wang 2018, Thm 8; Dong et al. 2019, Cor. 2.13).

    With A = μ/2 − ε/μ and B = −μ/2 − ε/μ, δ = Φ(A) − e^ε Φ(B). Two evaluations, each
    accurate to about 1e-11 relative against mpmath (1,500 random (ε, δ) with ε in
    [1e-9, 30] and δ in [1e-300, 0.1], at the calibrated μ):

    * A ≥ 26 (Φ(A) within 1e-149 of 1): exp(a)·(1 − exp(b − a)) with a = log Φ(A) and
      b = ε + log Φ(B) = −A²/2 + log(½ erfcx(−B/√2)) (no huge terms subtracted).
    * A < 26 (in particular both tails: tiny ε or tiny δ): Φ(x) = ½ erfcx(−x/√2) e^(−x²/2) and
      ε − B²/2 = −A²/2 exactly, so δ = ½ e^(−A²/2) (erfcx(x_a) − erfcx(x_a + h)) with
      x_a = −A/√2 and h = μ/√2. The difference is taken directly, or, when h ≤ 1e-4·(1 + |x_a|)
      (tiny μ: the two values agree to many digits, and the log-Φ form lost up to half of δ
      there), as −∫ erfcx′ over [x_a, x_a + h] by an 8-point Gauss–Legendre rule.

    A is correctly rounded where μ/2 and ε/μ nearly cancel (:func:`_big_a`). A δ that
    underflows (or comes out NaN from inf·0 at an infinite ε/μ) is returned as the smallest
    positive float, and one below the normal range gets four subnormal steps of padding.

    The result is raised by a relative 1e-7 (``DELTA_SAFETY``), so it is never below the
    exact value: every calibration and budget check built on it errs on the side of privacy.
    Raises ``ValueError`` for a negative or NaN μ or ε.
    """
    _check_curve_args(mu, epsilon)
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    big_a = _big_a(mu, epsilon)
    if big_a >= _HEAD_FROM:
        # e^ε Φ(B) = e^(−A²/2)·½erfcx(x_b): ε + log Φ(B) without subtracting two huge numbers
        a = float(log_ndtr(big_a))
        eb = float(erfcx((mu / 2.0 + epsilon / mu) / _SQRT2))
        b = -0.5 * big_a * big_a + (math.log(0.5 * eb) if eb > 0.0 else -math.inf)
        d = float(math.exp(a) * -math.expm1(b - a))
    else:
        h = mu / _SQRT2  # x_b − x_a, formed directly rather than as a difference
        diff = _erfcx_drop(-big_a / _SQRT2, h)
        d = 0.5 * math.exp(-0.5 * big_a * big_a) * diff
    return pad_delta(d)


def _big_a(mu: float, epsilon: float) -> float:
    """A = μ/2 − ε/μ, correctly rounded where the two terms nearly cancel.

    δ depends on A through e^(−A²/2): an absolute error e in A moves δ by a relative |A|·e,
    and the float difference errs by up to u·(μ/2 + ε/μ) — beyond the 1e-7 padding once
    the terms pass ~1e6 (μ ≳ 1e8 at an ε near μ²/2). There A is computed exactly in
    rationals and rounded once.
    """
    half, ratio = mu / 2.0, epsilon / mu
    if half + ratio <= _EXACT_A_FROM or not math.isfinite(ratio):
        return half - ratio
    return float(Fraction(mu) / 2 - Fraction(epsilon) / Fraction(mu))


def pad_delta(d: float) -> float:
    """The padded upper bound: ``d``·(1 + 1e-7), at least the smallest positive float, and
    four subnormal steps more below the normal range (where a relative pad is too small)."""
    if not d > 0.0:  # underflow, rounding or inf·0: the exact δ (≥ 0) is below the smallest float
        return _TINY
    if d < _SMALLEST_NORMAL:
        return d * DELTA_SAFETY + 4 * _TINY
    return min(1.0, d * DELTA_SAFETY)


def _erfcx_drop(x: float, h: float) -> float:
    """erfcx(x) − erfcx(x + h) for h > 0: a direct difference when it keeps ~12 digits
    (|erfcx′/erfcx| ≳ 1/(1 + |x|), so the difference is ≳ h/(1 + |x|) of either value),
    else −∫ erfcx′(t) dt with erfcx′(t) = 2t·erfcx(t) − 2/√π by Gauss–Legendre."""
    if h > _DIRECT_FROM * (1.0 + abs(x)):
        return float(erfcx(x) - erfcx(x + h))
    return float(_erfcx_drop_quad(np.array([x]), np.array([h]))[0])


def _erfcx_drop_quad(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """erfcx(x) − erfcx(x + h) elementwise (shapes (m,)) as −∫ erfcx′ by 8-point Gauss–Legendre."""
    t = x[:, None] + 0.5 * h[:, None] * (1.0 + _GL_X)  # shape (m, 8)
    with np.errstate(invalid="ignore", over="ignore"):  # x = inf gives NaN: pad_delta turns it into the smallest float
        return 0.5 * h * ((_TWO_OVER_SQRT_PI - 2.0 * t * erfcx(t)) @ _GL_W)


def gdp_delta_many(mu: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """:func:`gdp_delta` elementwise (the same two evaluations and padding), for finite μ > 0.

    ``mu`` of shape (n,); ``eps`` a float or of shape (n,). Returns shape (n,).
    """
    mu = np.asarray(mu, dtype=float)
    eps = np.broadcast_to(np.asarray(eps, dtype=float), mu.shape)
    if not (np.all(mu > 0.0) and np.all(np.isfinite(mu)) and np.all(eps >= 0.0)):
        raise ValueError("gdp_delta_many needs finite mu > 0 and epsilon >= 0")
    out = np.empty_like(mu)
    with np.errstate(all="ignore"):
        big_a = mu / 2.0 - eps / mu
        for i in np.flatnonzero(mu / 2.0 + eps / mu > _EXACT_A_FROM):  # rare: A exactly (see _big_a)
            big_a[i] = _big_a(float(mu[i]), float(eps[i]))
        head = big_a >= _HEAD_FROM
        if head.any():
            mh, eh, ah = mu[head], eps[head], big_a[head]
            a = log_ndtr(ah)
            b = -0.5 * ah * ah + np.log(0.5 * erfcx((mh / 2.0 + eh / mh) / _SQRT2))
            out[head] = np.exp(a) * -np.expm1(b - a)
        tail = ~head
        x, h = -big_a[tail] / _SQRT2, mu[tail] / _SQRT2
        diff = erfcx(x) - erfcx(x + h)
        near = h <= _DIRECT_FROM * (1.0 + np.abs(x))
        if near.any():
            diff[near] = _erfcx_drop_quad(x[near], h[near])
        out[tail] = 0.5 * np.exp(-0.5 * big_a[tail] ** 2) * diff
    return np.array([pad_delta(float(d)) for d in out]) if (~(out >= _SMALLEST_NORMAL)).any() else \
        np.minimum(1.0, out * DELTA_SAFETY)


def gdp_mu(epsilon: float, delta: float) -> float:
    """The largest μ such that μ-GDP implies (ε, δ)-DP (conservative: the low end of the bisection)."""
    epsilon = check_epsilon(epsilon) * (1.0 - EPS_SLACK)
    delta = check_delta(delta)
    try:
        lo, _ = bisect(lambda m: gdp_delta(m, epsilon) <= delta, 0.0, 1.0, max_hi=1e12)
    except ValueError:  # pragma: no cover - ε would have to be astronomically large
        raise ValueError(f"no finite noise scale is needed for epsilon={epsilon!r}, delta={delta!r}") from None
    return float(lo)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε such that μ-GDP implies (ε, δ)-DP (conservative: the high end of the bisection)."""
    delta = check_delta(delta)
    mu = float(mu)
    if math.isnan(mu) or mu < 0.0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    if math.isinf(mu):
        return math.inf
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    _, hi = bisect(lambda e: gdp_delta(mu, e) > delta, 0.0, 1.0)
    return float(hi)


def gdp_epsilon_many(mus: Sequence[float], delta: float) -> list[float]:
    """:func:`gdp_epsilon` for many finite μ > 0 at once: the same bisection, vectorised.

    Each element follows the scalar bisection's path and returns the conservative (high)
    end. NumPy's ``exp`` may differ from ``math.exp`` in the last bit, so each result is
    finally checked with the scalar :func:`gdp_delta`; the rare one that fails is
    recomputed by the scalar :func:`gdp_epsilon`.
    """
    delta = check_delta(delta)
    mu = np.asarray(mus, dtype=float)  # shape: (k,)
    if mu.ndim != 1 or not (np.all(mu > 0.0) and np.all(np.isfinite(mu))):
        raise ValueError("gdp_epsilon_many needs a sequence of finite mu > 0")
    zero = gdp_delta_many(mu, 0.0) <= delta
    _, hi = bisect(lambda e: ~zero & (gdp_delta_many(mu, e) > delta), np.zeros_like(mu), np.ones_like(mu))
    out = np.where(zero, 0.0, hi).tolist()
    for i, (m_i, e_i) in enumerate(zip(mus, out)):
        if gdp_delta(m_i, e_i) > delta:
            out[i] = gdp_epsilon(m_i, delta)
    return out


#: Counts below this convert to float without overflow (the fast path of sum_mu2).
_BIG_COUNT = 2**1000


def count_as_float(n: int) -> float:
    """A multiplicity as a float (``inf`` past the float range, where ``float(n)`` raises)."""
    try:
        return float(n)
    except OverflowError:
        return math.inf


def sum_mu2(pairs: Iterable[tuple[float, int]]) -> float:
    """Σ nᵢ μᵢ² over (μᵢ, nᵢ) pairs in the order given: the one place the GDP total is computed.

    ``μ*μ`` overflows to ``inf`` where ``μ**2`` would raise ``OverflowError``; a μ² that
    underflows to 0 adds nothing (and never meets an infinite count as ∞·0).
    """
    total = 0.0
    for mu, n in pairs:
        m2 = mu * mu
        if m2:
            total += n * m2 if n < _BIG_COUNT else count_as_float(n) * m2
    return total
