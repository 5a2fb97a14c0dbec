"""Eigengap diagnostics of releases (free post-processing) and error-bound analysis tools."""

from ._bounds import (
    TheoryBounds,
    analyze_gauss_captured_variance_bound,
    deterministic_frobenius_bound,
    deterministic_spectral_bound,
    mangoubi_vishnoi_bound,
    re_analyze_gauss_bound,
    theory_bounds,
)
from ._montecarlo import BoundCheck, RepulsionResult, check_bounds, gap_repulsion
from ._noise import isotropic_equivalent_scale, noise_edge, noise_lipschitz, noise_norm_bound
from ._report import GapCondition, GapReport, diagnose

__all__ = [
    "BoundCheck",
    "GapCondition",
    "GapReport",
    "RepulsionResult",
    "TheoryBounds",
    "analyze_gauss_captured_variance_bound",
    "check_bounds",
    "deterministic_frobenius_bound",
    "deterministic_spectral_bound",
    "diagnose",
    "gap_repulsion",
    "isotropic_equivalent_scale",
    "mangoubi_vishnoi_bound",
    "noise_edge",
    "noise_lipschitz",
    "noise_norm_bound",
    "re_analyze_gauss_bound",
    "theory_bounds",
]
