"""Analysis tools that take the TRUE matrix: not private.

Everything here reads the matrix (or its spectrum) that a release would protect, so none
of it may be run on private data whose results are published. Use it to plan (which
mechanism, which ε, which k) on public or synthetic data, to check the theory, and to
audit a mechanism empirically:

* error bounds of the papers for a known matrix (:func:`theory_bounds` and one function
  per theorem);
* Monte Carlo checks of those bounds and of gap repulsion (:func:`check_bounds`,
  :func:`gap_repulsion`);
* a statistical auditor giving an empirical lower bound on ε (:func:`audit`).
"""

from ._audit import AuditResult, audit, block_diagonal_sampler, clopper_pearson
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

__all__ = [
    "AuditResult",
    "BoundCheck",
    "RepulsionResult",
    "TheoryBounds",
    "analyze_gauss_captured_variance_bound",
    "audit",
    "block_diagonal_sampler",
    "check_bounds",
    "clopper_pearson",
    "deterministic_frobenius_bound",
    "deterministic_spectral_bound",
    "gap_repulsion",
    "mangoubi_vishnoi_bound",
    "re_analyze_gauss_bound",
    "theory_bounds",
]
