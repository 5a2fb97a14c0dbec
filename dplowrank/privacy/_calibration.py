"""Noise calibration for the Gaussian mechanism: the ε, δ, σ relations.

Everything here is stateless arithmetic on the privacy parameters; it never sees data.
σ = Δ/μ with μ from the exact GDP curve (:mod:`._gdp`: Balle & Wang 2018, Thm 8), or the
classical σ = Δ·√(2 ln(1.25/δ))/ε (Dwork & Roth 2014, Thm A.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._validation import check_choice, check_delta, check_epsilon, check_positive
from ._events import GaussianEvent
from ._gdp import EPS_SLACK, gdp_delta, gdp_epsilon, gdp_mu
from ._search import nudge

__all__ = [
    "NoiseCalibration",
    "analytic_gaussian_sigma",
    "classic_gaussian_sigma",
    "calibrate_noise",
    "gaussian_delta",
    "gaussian_epsilon",
]

CALIBRATIONS = ("analytic", "classic")


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
    eps, delta = check_epsilon(epsilon), check_delta(delta)
    target = eps * (1.0 - EPS_SLACK)
    try:
        # Δ/μ can round to a σ whose μ is one ulp above the bisection's safe end: σ steps up
        # until the δ it achieves is within the target.
        return nudge(lambda s: gdp_delta(sens / s, target) <= delta, sens / gdp_mu(eps, delta), +1.0)
    except ValueError:
        raise ValueError(
            f"cannot calibrate a noise scale for epsilon={epsilon!r}, delta={delta!r}, "
            f"sensitivity={sensitivity!r} in floating point"
        ) from None


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
