"""Noise calibration for the Gaussian mechanism: the ε, δ, σ relations.

Everything here is stateless arithmetic on the privacy parameters; it never sees data.

A Gaussian mechanism with L2 sensitivity Δ and noise scale σ is μ-GDP with μ = Δ/σ
(Dong, Roth & Su 2019, arXiv:1905.02383, Thm 2.7) and is (ε, δ)-DP exactly when

    δ(ε; μ) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ) ≤ δ

(Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy",
arXiv:1805.06530, Thm 8; the same curve is Dong–Roth–Su Cor. 2.13). δ(ε; μ) is strictly
increasing in μ and strictly decreasing in ε, so both inversions are bisections; each
returns the end of its bracket that is on the private side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from .._validation import check_choice, check_delta, check_epsilon, check_positive

__all__ = [
    "NoiseCalibration",
    "analytic_gaussian_sigma",
    "classic_gaussian_sigma",
    "calibrate_noise",
    "gaussian_delta",
    "gaussian_epsilon",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu",
]

CALIBRATIONS = ("analytic", "classic")
_BISECT_STEPS = 200
#: gdp_delta returns the computed curve times this, an upper bound on the exact value: against
#: mpmath (80 digits) the float64 evaluation was at most 2.8e-9 (relative) below the exact δ,
#: worst for tiny ε and δ (3,000 random (μ, ε) and the corners ε = 1e-5…1e-3, δ = 1e-30…1e-12).
_DELTA_SAFETY = 1.0 + 1e-7
#: Calibrations aim at ε·(1 − 1e-9): near its root the computed δ(ε) is not monotone to the
#: last bits, so ε read back by bisection (``gdp_epsilon``) could land a few ulps above an ε
#: calibrated exactly at the edge; the slack keeps the reported ε at or below the target.
_EPS_SLACK = 1e-9


def gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of a μ-GDP mechanism (Balle & Wang 2018, Thm 8; Dong et al. 2019, Cor. 2.13).

    Computed as exp(a)·(1 − exp(b − a)) with a = log Φ(μ/2 − ε/μ) and
    b = ε + log Φ(−μ/2 − ε/μ), which is stable where both terms are tiny, then raised by a
    relative 1e-7 so that it is never below the exact value (its float64 error is ≤ 3e-9):
    every calibration and budget check built on it errs on the side of privacy.
    """
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    a = float(log_ndtr(mu / 2.0 - epsilon / mu))
    b = epsilon + float(log_ndtr(-mu / 2.0 - epsilon / mu))
    if b >= a:  # only by rounding; the true value is ≥ 0
        return 0.0
    d = float(math.exp(a) * -math.expm1(b - a))
    return d if math.isnan(d) else min(1.0, d * _DELTA_SAFETY)  # (min(1, NaN) would be 1)


def gdp_mu(epsilon: float, delta: float) -> float:
    """The largest μ such that μ-GDP implies (ε, δ)-DP (bisection, conservative: returns the low end)."""
    epsilon = check_epsilon(epsilon) * (1.0 - _EPS_SLACK)
    delta = check_delta(delta)
    lo, hi = 0.0, 1.0
    while gdp_delta(hi, epsilon) <= delta:
        lo, hi = hi, 2.0 * hi
        if hi > 1e12:  # pragma: no cover - ε would have to be astronomically large
            raise ValueError(f"no finite noise scale is needed for epsilon={epsilon!r}, delta={delta!r}")
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if gdp_delta(mid, epsilon) <= delta:
            lo = mid
        else:
            hi = mid
    return lo


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε such that μ-GDP implies (ε, δ)-DP (bisection, conservative: returns the high end)."""
    delta = check_delta(delta)
    mu = float(mu)
    if math.isnan(mu) or mu < 0.0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    if math.isinf(mu):
        return math.inf
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gdp_delta(mu, hi) > delta:
        lo, hi = hi, 2.0 * hi
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if gdp_delta(mu, mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest Gaussian noise scale σ giving (ε, δ)-DP for L2 sensitivity Δ.

    The analytic Gaussian mechanism (Balle & Wang 2018, arXiv:1805.06530, Thm 8 and
    Alg. 1), valid for every ε > 0. Solved by bisection on μ = Δ/σ; the returned σ is
    never below the exact one (so the release never overshoots ε).

    Parameters
    ----------
    epsilon : float
        Target ε > 0.
    delta : float
        Target δ in (0, 1).
    sensitivity : float, default 1.0
        L2 sensitivity Δ > 0 of the released quantity.

    Returns
    -------
    float
        σ > 0.

    Examples
    --------
    >>> round(analytic_gaussian_sigma(1.0, 1e-5), 4)
    3.7306
    """
    sens = check_positive(sensitivity, "sensitivity")
    sigma = sens / gdp_mu(epsilon, delta)
    # Δ/σ can round to a μ one ulp above the bisection's safe end: step σ up until the
    # δ actually achieved by the returned σ is within the target.
    step = 0.0
    for _ in range(200):
        if gdp_delta(sens / sigma, float(epsilon) * (1.0 - _EPS_SLACK)) <= delta:
            return sigma
        # one ulp at first; the step doubles, so an extreme input cannot loop for long
        step = max(2.0 * step, math.nextafter(sigma, math.inf) - sigma)
        sigma += step
    raise ValueError(
        f"cannot calibrate a noise scale for epsilon={epsilon!r}, delta={delta!r}, "
        f"sensitivity={sensitivity!r} in floating point"
    )


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """σ = Δ·√(2 ln(1.25/δ))/ε, the classical calibration (Dwork & Roth 2014, Thm A.1).

    Valid only for ε < 1; larger ε raises ``ValueError``. Never smaller than the analytic σ.
    """
    eps = check_epsilon(epsilon)
    delta = check_delta(delta)
    sens = check_positive(sensitivity, "sensitivity")
    if eps >= 1.0:
        raise ValueError(
            f"the classic Gaussian calibration is valid only for epsilon < 1, got epsilon={epsilon!r}; "
            "use calibration='analytic'"
        )
    return sens * math.sqrt(2.0 * math.log(1.25 / delta)) / eps


def gaussian_epsilon(noise_scale: float, delta: float, sensitivity: float = 1.0) -> float:
    """The exact ε at which Gaussian noise of scale σ is (ε, δ)-DP for sensitivity Δ.

    Inverts Balle & Wang 2018, Thm 8 (conservative: the returned ε is never too small).

    Examples
    --------
    >>> round(gaussian_epsilon(3.0, 1e-5), 4)
    1.2711
    """
    sigma = check_positive(noise_scale, "noise_scale")
    sens = check_positive(sensitivity, "sensitivity")
    return gdp_epsilon(sens / sigma, delta)


def gaussian_delta(noise_scale: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """δ(ε) of Gaussian noise of scale σ for sensitivity Δ (Balle & Wang 2018, Thm 8)."""
    sigma = check_positive(noise_scale, "noise_scale")
    sens = check_positive(sensitivity, "sensitivity")
    eps = check_positive(epsilon, "epsilon", allow_zero=True)
    return gdp_delta(sens / sigma, eps)


@dataclass(frozen=True, slots=True)
class NoiseCalibration:
    """A calibrated Gaussian noise scale and the guarantee it gives.

    Attributes
    ----------
    method : str
        ``"analytic"``, ``"classic"``, ``"noise_scale"``, ``"zcdp"`` or ``"gdp"``.
    noise_scale : float
        σ, the standard deviation of the Gaussian noise (before any shape factor).
    sensitivity : float
        Δ, the L2 sensitivity σ was calibrated for.
    mu : float
        Δ/σ: the mechanism is μ-GDP (exact for a Gaussian).
    epsilon, delta : float or None
        The (ε, δ)-DP guarantee: ε is the exact ε(δ) of μ-GDP (≤ a requested target).
        ``None`` when no δ was given.
    """

    method: str
    noise_scale: float
    sensitivity: float
    mu: float
    epsilon: float | None
    delta: float | None

    @property
    def noise_multiplier(self) -> float:
        """σ/Δ, as in dp_accounting's ``GaussianDpEvent``."""
        return self.noise_scale / self.sensitivity

    @property
    def event(self):
        """The accounting event of one release with this noise: ``GaussianEvent(σ/Δ)``."""
        from ..accounting._events import GaussianEvent  # local: accounting imports this module

        return GaussianEvent(self.noise_multiplier)

    @property
    def rho(self) -> float:
        """zCDP parameter ρ = Δ²/(2σ²) (Bun & Steinke 2016, Prop. 1.6); ``inf`` where μ² overflows."""
        return 0.5 * self.mu * self.mu  # a float product overflows to inf; ``**`` would raise


def calibrate_noise(
    sensitivity: float,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    calibration: str = "analytic",
    noise_scale: float | None = None,
    rho: float | None = None,
    mu: float | None = None,
) -> NoiseCalibration:
    """Calibrate Gaussian noise for sensitivity Δ from exactly one privacy specification.

    Give either a target (ε, δ) with ``calibration`` in {"analytic", "classic"}, or a
    fixed ``noise_scale`` σ, or a zCDP ``rho`` (σ = Δ/√(2ρ)), or a GDP ``mu`` (σ = Δ/μ).
    With the last three, ``delta`` (optional) is used to report the exact ε(δ).

    Parameters
    ----------
    sensitivity : float
        L2 (Frobenius) sensitivity Δ > 0.
    epsilon, delta : float, optional
    calibration : {"analytic", "classic"}, default "analytic"
    noise_scale, rho, mu : float, optional

    Returns
    -------
    NoiseCalibration
    """
    sens = check_positive(sensitivity, "sensitivity")
    given = {
        name: v
        for name, v in (("epsilon", epsilon), ("noise_scale", noise_scale), ("rho", rho), ("mu", mu))
        if v is not None
    }
    if len(given) != 1:
        raise ValueError(
            "give exactly one of epsilon (with delta), noise_scale, rho or mu; got "
            + (", ".join(f"{k}={v!r}" for k, v in given.items()) or "none")
        )
    if delta is not None:
        delta = check_delta(delta)
    if epsilon is not None:
        check_choice(calibration, "calibration", CALIBRATIONS)
        if delta is None:
            raise ValueError("delta is required with epsilon (the Gaussian mechanism needs delta > 0)")
        eps = check_epsilon(epsilon)
        if calibration == "analytic":
            sigma = analytic_gaussian_sigma(eps, delta, sens)
        else:
            sigma = classic_gaussian_sigma(eps, delta, sens)
        method = calibration
    elif noise_scale is not None:
        sigma = check_positive(noise_scale, "noise_scale")
        method = "noise_scale"
    elif rho is not None:
        sigma = sens / math.sqrt(2.0 * check_positive(rho, "rho"))
        method = "zcdp"
    else:
        sigma = sens / check_positive(mu, "mu")
        method = "gdp"
    if not (math.isfinite(sigma) and sigma > 0.0 and math.isfinite(sens / sigma)):
        raise ValueError(
            f"{method} calibration gives noise scale {sigma!r} for sensitivity {sens!r}, "
            "which is not a usable positive finite number"
        )
    mu_val = sens / sigma
    eps_out = gdp_epsilon(mu_val, delta) if delta is not None else None
    if epsilon is not None and eps_out is not None:
        # The bisection keeps σ on the safe side, so the exact ε can only be below target.
        eps_out = min(eps_out, float(epsilon))
    return NoiseCalibration(method, float(sigma), sens, float(mu_val), eps_out, delta)
