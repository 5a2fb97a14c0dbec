"""Diagnostics of a release, computed from the release alone: free post-processing.

The noise edge and norm bound of each noise shape, the gap conditions of the theorems, and
:func:`diagnose`, which judges a release's spectrum against them. Nothing here reads private
data. The tools that need the true matrix live in :mod:`dplowrank.analysis`.
"""

from ._noise import SHAPES, isotropic_equivalent_scale, noise_edge, noise_lipschitz, noise_norm_bound
from ._report import GapCondition, GapReport, diagnose
from ._spike import SpikeEstimate, signal_rank, signal_threshold, spike_estimate
from ._theorems import (
    C_MV,
    C_RAG,
    GAP_THEOREMS,
    MV_GAP,
    RAG_GAP,
    applies,
    gap_threshold,
    primary_theorem,
    supported_k,
)

__all__ = [
    "C_MV",
    "C_RAG",
    "GAP_THEOREMS",
    "GapCondition",
    "GapReport",
    "MV_GAP",
    "RAG_GAP",
    "SHAPES",
    "SpikeEstimate",
    "applies",
    "diagnose",
    "gap_threshold",
    "isotropic_equivalent_scale",
    "noise_edge",
    "noise_lipschitz",
    "noise_norm_bound",
    "primary_theorem",
    "signal_rank",
    "signal_threshold",
    "spike_estimate",
    "supported_k",
]

#: Analysis tools that lived here before they moved to :mod:`dplowrank.analysis` (they take the
#: true matrix, so they are not diagnostics of a release). Importing them from here still
#: works, with a ``DeprecationWarning``; the flat names ``dplowrank.<name>`` are unchanged.
_MOVED_TO_ANALYSIS = frozenset({
    "BoundCheck", "RepulsionResult", "TheoryBounds", "analyze_gauss_captured_variance_bound", "check_bounds",
    "deterministic_frobenius_bound", "deterministic_spectral_bound", "gap_repulsion", "mangoubi_vishnoi_bound",
    "re_analyze_gauss_bound", "theory_bounds",
})


def __getattr__(name: str):
    """Deprecation shim (PEP 562) for the names that moved to :mod:`dplowrank.analysis`."""
    if name in _MOVED_TO_ANALYSIS:
        import warnings

        from .. import analysis  # deprecation shim: the one allowed upward import (tools/structure.py)

        warnings.warn(f"dplowrank.diagnostics.{name} moved to dplowrank.analysis.{name} (or dplowrank.{name})",
                      DeprecationWarning, stacklevel=2)
        return getattr(analysis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
