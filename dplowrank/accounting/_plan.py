"""Splitting a total (ε, δ) over a plan of Gaussian releases."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._validation import check_delta, check_epsilon, check_positive
from ..mechanisms._calibration import NoiseCalibration, gdp_epsilon, gdp_mu
from ._accountant import PrivacyAccountant

__all__ = ["calibrate_plan"]

#: A plan is a list of releases, one calibration each: more than this is a mistake.
_MAX_PLAN = 1_000_000


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
    σᵢ = Δᵢ/μᵢ. The result is checked against the exact δ(ε) curve and nudged toward more
    noise if rounding would overshoot.

    Parameters
    ----------
    epsilon, delta : float
        The total budget.
    num_releases : int, optional
        m equal shares (give this, or ``weights``, or ``sensitivities``).
    weights : sequence of float, optional
        Positive relative shares, one per release.
    sensitivities : sequence of float, optional
        Δᵢ of each release (default 1, so σᵢ is the noise multiplier).

    Returns
    -------
    tuple of NoiseCalibration
        One per release; each one's ``epsilon`` is that release's cost alone at ``delta``.
    """
    epsilon = check_epsilon(epsilon)
    delta = check_delta(delta)
    m = None
    if num_releases is not None:
        if isinstance(num_releases, bool) or not isinstance(num_releases, int) or not 1 <= num_releases <= _MAX_PLAN:
            raise ValueError(f"num_releases must be an integer in [1, {_MAX_PLAN}], got {num_releases!r}")
        m = num_releases
    if weights is not None:
        w = [check_positive(x, "weight") for x in weights]
        if m is not None and len(w) != m:
            raise ValueError(f"{len(w)} weights for num_releases={m}")
        m = len(w)
    if sensitivities is not None:
        sens = [check_positive(x, "sensitivity") for x in sensitivities]
        if m is not None and len(sens) != m:
            raise ValueError(f"{len(sens)} sensitivities for {m} releases")
        m = len(sens)
    if not m:
        raise ValueError("give num_releases, weights or sensitivities (at least one release)")
    w = list(weights) if weights is not None else [1.0] * m
    sens = list(sensitivities) if sensitivities is not None else [1.0] * m
    total_w = math.fsum(w)
    if not math.isfinite(total_w):
        raise ValueError(f"the weights sum to {total_w!r}; give finite relative shares")
    mu_total = gdp_mu(epsilon, delta)
    for i, (wi, si) in enumerate(zip(w, sens)):
        mu_i = mu_total * math.sqrt(wi / total_w)
        if not (mu_i > 0.0 and math.isfinite(si / mu_i)):
            raise ValueError(
                f"release {i} (weight {wi!r} of a total {total_w!r}, sensitivity {si!r}) would "
                "get a zero share of the budget (infinite noise) in floating point; give "
                "weights within a ratio floating point can represent"
            )
    shrink, step = 1.0, 1e-12
    for _ in range(200):
        mus = [mu_total * shrink * math.sqrt(wi / total_w) for wi in w]
        plan = tuple(
            NoiseCalibration("plan", s / mu, s, mu, gdp_epsilon(mu, delta), delta) for s, mu in zip(sens, mus)
        )
        # Check with the accountant itself (the same arithmetic that will price the plan).
        if PrivacyAccountant(plan).delta(epsilon, method="gdp") <= delta:
            return plan
        shrink *= 1.0 - step  # the step doubles, so an extreme input cannot loop for long
        step = min(2.0 * step, 0.5)
    raise ValueError(f"cannot split epsilon={epsilon!r}, delta={delta!r} over {m} releases in floating point")
