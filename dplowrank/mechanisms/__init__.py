"""Sensitivity, noise shapes and calibration of the Gaussian mechanisms."""

from ._calibration import (
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
from ._sensitivity import NEIGHBOURS, gram_sensitivity

__all__ = [
    "NEIGHBOURS",
    "NOISE_SHAPES",
    "ComplexGaussianMechanism",
    "GaussianMechanism",
    "NoiseCalibration",
    "analytic_gaussian_sigma",
    "calibrate_noise",
    "classic_gaussian_sigma",
    "gaussian_delta",
    "gaussian_epsilon",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu",
    "gram_sensitivity",
]
