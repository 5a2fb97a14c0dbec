"""Splitting a total (ε, δ) over a plan of Gaussian releases.

Gaussian releases compose exactly in GDP: μ² adds (Dong, Roth & Su 2019, arXiv:1905.02383,
Cor. 3.3), and μ-GDP is (ε, δ)-DP exactly when δ(ε; μ) ≤ δ (Balle & Wang 2018,
arXiv:1805.06530, Thm 8). So a plan is one bisection for the total μ, a split of μ², one
check of the composition, and one ε per *distinct* μ (scalar bisections for a few distinct
values, one vectorised bisection for many), however many releases share each.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence

import numpy as np

from .._validation import check_delta, check_epsilon, check_positive
from ..privacy import EPS_SLACK, NoiseCalibration, gdp_delta, gdp_epsilon, gdp_epsilon_many, gdp_mu, nudge, sum_mu2

__all__ = ["calibrate_plan"]

#: A plan is a list of releases, one calibration each: more than this is a mistake.
_MAX_PLAN = 1_000_000
_ULP = 2.0**-52
#: From this many distinct μ on, one vectorised bisection beats scalar ones (~0.6 ms fixed cost).
_VECTORISE_FROM = 12


def calibrate_plan(
    epsilon: float,
    delta: float,
    *,
    num_releases: int | None = None,
    weights: Sequence[float] | None = None,
    sensitivities: Sequence[float] | None = None,
) -> tuple[NoiseCalibration, ...]:
    """Noise scales for m Gaussian releases whose composition is (ε, δ)-DP, never more.

    Gaussian releases compose exactly in GDP (μ² adds; Dong, Roth & Su 2019, Cor. 3.3), so
    the total μ = gdp_mu(ε, δ) is split as μᵢ = μ·√(wᵢ/Σw): a release with twice the
    weight gets twice the μ² share (√2 less noise relative to its sensitivity). Then
    σᵢ = Δᵢ/μᵢ. The events of the plan are checked against the exact δ(ε) curve, both in
    the accountant's own arithmetic and with a bound that holds for any order of
    summation, and all μᵢ are nudged down together if rounding would overshoot.

    Parameters
    ----------
    epsilon, delta : float
        The total budget: ε > 0, δ in (0, 1).
    num_releases : int, optional
        m equal shares (give this, or ``weights``, or ``sensitivities``). Any integral
        type (e.g. ``numpy.int64``), 1 ≤ m ≤ 1,000,000.
    weights : sequence of float, optional
        Positive finite relative shares, one per release (any scale: they are divided
        by their maximum first).
    sensitivities : sequence of float, optional
        Δᵢ of each release (default 1, so σᵢ is the noise multiplier).

    Returns
    -------
    tuple of NoiseCalibration
        One per release; each one's ``epsilon`` is that release's cost alone at ``delta``
        (never below the exact value).

    Raises
    ------
    ValueError
        For an invalid budget, count, weight or sensitivity, or a share that underflows
        to zero in floating point.

    References
    ----------
    Dong, Roth & Su 2019, "Gaussian Differential Privacy", arXiv:1905.02383, Cor. 3.3.
    Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy",
    arXiv:1805.06530, Thm 8.

    Examples
    --------
    >>> plan = calibrate_plan(1.0, 1e-6, weights=[2, 1, 1])
    >>> [round(c.noise_multiplier, 3) for c in plan]
    [5.975, 8.449, 8.449]
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    m = None
    if num_releases is not None:
        if (isinstance(num_releases, bool) or not isinstance(num_releases, numbers.Integral)
                or not 1 <= num_releases <= _MAX_PLAN):
            raise ValueError(f"num_releases must be an integer in [1, {_MAX_PLAN}], got {num_releases!r}")
        m = int(num_releases)
    if weights is not None:
        w = [check_positive(x, "weight") for x in _sequence(weights, "weights")]
        if m is not None and len(w) != m:
            raise ValueError(f"{len(w)} weights for num_releases={m}")
        m = len(w)
    if sensitivities is not None:
        sens = [check_positive(x, "sensitivity") for x in _sequence(sensitivities, "sensitivities")]
        if m is not None and len(sens) != m:
            raise ValueError(f"{len(sens)} sensitivities for {m} releases")
        m = len(sens)
    if not m:
        raise ValueError("give num_releases, weights or sensitivities (at least one release)")
    if m > _MAX_PLAN:
        raise ValueError(f"a plan has at most {_MAX_PLAN} releases, got {m}")
    if weights is None:
        roots = [math.sqrt(1.0 / m)] * m
    else:
        roots = _share_roots(w)
    if sensitivities is None:
        sens = [1.0] * m
    return _plan(epsilon, delta, roots, sens)


def _sequence(values: object, name: str) -> list:
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of positive numbers, got {values!r}")
    return list(values)


def _share_roots(w: list[float]) -> list[float]:
    """√(wᵢ/Σw), with the weights divided by their maximum first (so Σ cannot overflow)."""
    top = max(w)
    scaled = [x / top for x in w]  # in (0, 1], one of them exactly 1
    total = math.fsum(scaled)  # in [1, m]
    cache: dict[float, float] = {}
    out: list[float] = []
    for wi, x in zip(w, scaled):
        share = x / total
        r = cache.get(share)
        if r is None:
            r = cache[share] = math.sqrt(share)
        if r == 0.0:
            raise ValueError(
                f"release {len(out)} (weight {wi!r}, largest weight {top!r}) would get a "
                "zero share of the budget (infinite noise) in floating point; give weights within "
                "a ratio floating point can represent"
            )
        out.append(r)
    return out


def _plan(epsilon: float, delta: float, roots: list[float], sens: list[float]) -> tuple[NoiseCalibration, ...]:
    m = len(roots)
    mu_total = gdp_mu(epsilon, delta)
    r_arr, s_arr = np.asarray(roots), np.asarray(sens)  # shape: (m,)
    with np.errstate(divide="ignore", over="ignore"):
        z = s_arr / (mu_total * r_arr) / s_arr
    bad = ~((r_arr > 0.0) & np.isfinite(z) & (z > 0.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"release {i} (share {roots[i] ** 2!r} of the budget, sensitivity {sens[i]!r}) would get a "
            "zero share of the budget (infinite noise) in floating point; give weights within a "
            "ratio floating point can represent"
        )
    # Start below μ by the any-order summation slack of _fits, so the first check passes;
    # otherwise shrink all shares together until the plan fits.
    start = (1.0 + (m + 2) * _ULP) ** -0.5 * (1.0 - 4.0 * _ULP)
    try:
        shrink = nudge(lambda f: f > 0.0 and _fits(s_arr, s_arr / (mu_total * f * r_arr), epsilon, delta), start, -1.0,
                       first_step=1e-12 * start, limit=0.0)
    except ValueError:
        shrink = 0.0
    if shrink <= 0.0:
        raise ValueError(f"cannot split epsilon={epsilon!r}, delta={delta!r} over {m} releases in floating point")
    mus = mu_total * shrink * r_arr  # shape: (m,)
    sigmas = s_arr / mus
    mus_l = mus.tolist()
    distinct = list(dict.fromkeys(mus_l))
    if len(distinct) < _VECTORISE_FROM:  # e.g. equal shares: one scalar bisection
        eps_of = {mu: gdp_epsilon(mu, delta) for mu in distinct}
    else:
        eps_of = dict(zip(distinct, gdp_epsilon_many(distinct, delta)))
    return tuple(
        NoiseCalibration("plan", sg, s, mu, eps_of[mu], delta) for sg, s, mu in zip(sigmas.tolist(), sens, mus_l)
    )


def _fits(s_arr: np.ndarray, sigmas: np.ndarray, epsilon: float, delta: float) -> bool:
    """Whether the plan's events compose to (ε, δ)-DP.

    Each release is priced as its event, ``GaussianEvent(σᵢ/Δᵢ)`` with μ = 1/(σᵢ/Δᵢ), as the
    accountant will price it (NumPy's division is IEEE-exact, as Python's). Two checks: the
    accountant's own sum (``sum_mu2``, in plan order), and an upper bound on Σμ² for *any*
    order of summation or grouping: a recursive sum of m non-negative terms is within a
    factor 1 + (m − 1)u of the exact one (Higham 2002, "Accuracy and Stability of Numerical
    Algorithms", Eq. (4.4)), and ``math.fsum`` within 1 + u.
    """
    emus = (1.0 / (sigmas / s_arr)).tolist()
    epsilon = epsilon * (1.0 - EPS_SLACK)  # see privacy.EPS_SLACK
    if gdp_delta(math.sqrt(sum_mu2(zip(emus, itertools.repeat(1)))), epsilon) > delta:
        return False
    bound = math.fsum(e * e for e in emus) * (1.0 + (len(emus) + 2) * _ULP)
    return gdp_delta(math.sqrt(bound), epsilon) <= delta
