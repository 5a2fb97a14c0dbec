"""The Gaussian mechanisms: sensitivity, noise shapes, and (re-exported from
:mod:`dplowrank.privacy`) their calibration."""

from ..privacy import (
    NoiseCalibration,
    analytic_gaussian_sigma,
    calibrate_noise,
    classic_gaussian_sigma,
    gaussian_delta,
    gaussian_epsilon,
    gdp_delta,
    gdp_epsilon,
    gdp_mu,
)
from ._gaussian import NOISE_SHAPES, ComplexGaussianMechanism, GaussianMechanism
from ._noise import noisy_symmetric_rows, shared_noise_source
from ._sensitivity import NEIGHBOURS, clip_factors, contribution_sensitivity, gram_sensitivity, square_up, times_sqrt2
from ._vector import gaussian_vector_noise

__all__ = [
    "NEIGHBOURS",
    "NOISE_SHAPES",
    "ComplexGaussianMechanism",
    "GaussianMechanism",
    "NoiseCalibration",
    "analytic_gaussian_sigma",
    "calibrate_noise",
    "classic_gaussian_sigma",
    "clip_factors",
    "contribution_sensitivity",
    "gaussian_delta",
    "gaussian_epsilon",
    "gaussian_vector_noise",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu",
    "gram_sensitivity",
    "noisy_symmetric_rows",
    "shared_noise_source",
    "square_up",
    "times_sqrt2",
]
