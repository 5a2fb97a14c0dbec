"""Diagnostics of a release, computed from the release alone: free post-processing.

The noise edge and norm bound of each noise shape, the gap conditions of the theorems, and
:func:`diagnose`, which judges a release's spectrum against them. Nothing here reads private
data. The tools that need the true matrix live in :mod:`dplowrank.analysis`.
"""

from ._noise import SHAPES, isotropic_equivalent_scale, noise_edge, noise_lipschitz, noise_norm_bound
from ._report import GapCondition, GapReport, diagnose
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
    "applies",
    "diagnose",
    "gap_threshold",
    "isotropic_equivalent_scale",
    "noise_edge",
    "noise_lipschitz",
    "noise_norm_bound",
    "primary_theorem",
    "supported_k",
]
