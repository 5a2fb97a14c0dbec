"""How large the noise of each mechanism is: its spectral edge and a high-probability bound.

For the three noise shapes (σ = noise scale, d = dimension):

==================  ===================  ===============  ==========================  ============
shape               off-diagonal law      edge  c·√d·σ     Lipschitz constant L        σ_iso
==================  ===================  ===============  ==========================  ============
isotropic (GOE)     N(0, σ²/2)           √2·√d·σ          σ                           σ
upper_triangular    N(0, σ²)             2·√d·σ           √2·σ                        √2·σ
hermitian (GUE)     Re, Im ~ N(0, σ²/2)  2·√d·σ           σ                           σ
==================  ===================  ===============  ==========================  ============

(The laws are those drawn by ``dplowrank.mechanisms``: ``noisy_symmetric`` with
off_std = σ/√2 (isotropic) or σ (upper-triangular), and ``noisy_hermitian``.)

σ_iso is the scale of the isotropic (GOE) noise with the same off-diagonal variance per
real component: √2 × the off-diagonal standard deviation. It is the scale at which the
eigenvector terms of the perturbation-theory bounds act: to first order the top-k
eigenvectors move by Σ_j uⱼᵀEuᵢ/(σᵢ − σⱼ)·uⱼ, and for orthonormal u, v the variance of
uᵀEv is σ_iso²/2 for the isotropic shape and at most that for the upper-triangular one
(it is σ²(1 − Σₗ uₗ²vₗ²), whose supremum over directions is σ² = σ_iso²/2).

Edge: E λ_max(E) ≤ c√dσ for every d, by the Sudakov–Fernique comparison of the process
u ↦ uᵀEu with u ↦ c'σ⟨g, u⟩ (the increments of the first are bounded by those of the
second, as in Davidson & Szarek 2001, Thm 2.11); the same holds for −E. It is also the
asymptotic edge of the semicircle law, so the bound is tight as d grows.

Tail: ‖E‖₂ is an L-Lipschitz function of the independent standard normals that build E
(‖E‖_F ≤ L‖g‖₂), so by Gaussian concentration (Tsirelson–Ibragimov–Sudakov) and a union
bound over ±E,

    P(‖E‖₂ ≥ c√dσ + L·√(2 ln(2/β))) ≤ β.

All constants are explicit; none is taken from the data.
"""

from __future__ import annotations

import math
import numbers

from .._validation import check_choice, check_positive

__all__ = ["SHAPES", "isotropic_equivalent_scale", "noise_edge", "noise_lipschitz", "noise_norm_bound"]

SHAPES = ("isotropic", "upper_triangular", "hermitian")
_EDGE = {"isotropic": math.sqrt(2.0), "upper_triangular": 2.0, "hermitian": 2.0}
_LIP = {"isotropic": 1.0, "upper_triangular": math.sqrt(2.0), "hermitian": 1.0}
_ISO = {"isotropic": 1.0, "upper_triangular": math.sqrt(2.0), "hermitian": 1.0}


def _check_dim(d: object) -> int:
    if isinstance(d, bool) or not isinstance(d, numbers.Real):
        raise TypeError(f"d must be a positive integer (the matrix dimension), got {d!r}")
    if not isinstance(d, numbers.Integral) or d < 1:
        raise ValueError(f"d must be a positive integer (the matrix dimension), got {d!r}")
    return int(d)


def _check_beta(failure_probability: object) -> float:
    if isinstance(failure_probability, bool) or not isinstance(failure_probability, numbers.Real):
        raise TypeError(f"failure_probability must be a number in (0, 1), got {failure_probability!r}")
    beta = float(failure_probability)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"failure_probability must lie in (0, 1), got {failure_probability!r}")
    return beta


def noise_edge(noise_shape: str, d: int, noise_scale: float) -> float:
    """c·√d·σ: the expected spectral norm bound (semicircle edge) of the noise."""
    check_choice(noise_shape, "noise_shape", SHAPES)
    d = _check_dim(d)
    return _EDGE[noise_shape] * math.sqrt(d) * check_positive(noise_scale, "noise_scale")


def isotropic_equivalent_scale(noise_shape: str, noise_scale: float) -> float:
    """σ_iso: the isotropic (GOE) scale with the same off-diagonal variance (see the module docstring)."""
    check_choice(noise_shape, "noise_shape", SHAPES)
    return _ISO[noise_shape] * check_positive(noise_scale, "noise_scale")


def noise_lipschitz(noise_shape: str, noise_scale: float) -> float:
    """L such that ‖E‖₂ is L-Lipschitz in the underlying standard normals."""
    check_choice(noise_shape, "noise_shape", SHAPES)
    return _LIP[noise_shape] * check_positive(noise_scale, "noise_scale")


def noise_norm_bound(noise_shape: str, d: int, noise_scale: float, failure_probability: float = 0.05) -> float:
    """B with P(‖E‖₂ > B) ≤ β: B = c√dσ + L√(2 ln(2/β)) (see the module docstring)."""
    beta = _check_beta(failure_probability)
    return noise_edge(noise_shape, d, noise_scale) + noise_lipschitz(noise_shape, noise_scale) * math.sqrt(
        2.0 * math.log(2.0 / beta)
    )
