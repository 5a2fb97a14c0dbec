"""Error bounds for private rank-k approximation, for a *known* matrix: analysis tools.

Everything here takes the true matrix (or its spectrum) and is therefore NOT private: use
it to plan (which mechanism, which ε, which k) on public or synthetic data, or to check
the theory, never on private data whose results you publish.

Notation: M symmetric PSD with eigenvalues σ₁ ≥ … ≥ σ_d, M_k its best rank-k
approximation, E the noise, Ã_k the rank-k output (top-k eigenpairs of M + E), σ the
noise scale, B a bound on ‖E‖₂ (see ``noise_norm_bound``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_k
from ._noise import noise_norm_bound

__all__ = [
    "TheoryBounds",
    "deterministic_spectral_bound",
    "deterministic_frobenius_bound",
    "analyze_gauss_captured_variance_bound",
    "mangoubi_vishnoi_bound",
    "re_analyze_gauss_bound",
    "theory_bounds",
]


def _spectrum(m) -> np.ndarray:
    """Eigenvalues, descending, of a matrix (Tensor/array of shape (d, d)) or a given spectrum."""
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    raw = np.asarray(m)
    if raw.dtype == object or raw.dtype.kind not in "biuf":
        raise TypeError(f"expected a real matrix or spectrum, got dtype {raw.dtype}")
    a = raw.astype(float)
    if not np.all(np.isfinite(a)):
        raise ValueError("the matrix or spectrum has NaN or Inf entries")
    if a.ndim == 2:
        if a.shape[0] != a.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {a.shape}")
        return np.linalg.eigvalsh(0.5 * (a + a.T))[::-1]
    if a.ndim == 1:
        return np.sort(a)[::-1]
    raise ValueError(f"expected a (d, d) matrix or a (d,) spectrum, got shape {a.shape}")


def deterministic_spectral_bound(sigma_k1: float, noise_norm: float) -> float:
    """‖Ã_k − M_k‖₂ ≤ 2(σ_{k+1} + ‖E‖₂), for every draw.

    Eckart–Young–Mirsky gives ‖(M+E) − Ã_k‖₂ = λ_{k+1}(M+E) ≤ σ_{k+1} + ‖E‖₂ (Weyl), and
    ‖(M+E) − M_k‖₂ ≤ σ_{k+1} + ‖E‖₂; the triangle inequality adds the two.
    """
    return 2.0 * (max(sigma_k1, 0.0) + noise_norm)


def deterministic_frobenius_bound(k: int, sigma_k1: float, noise_norm: float) -> float:
    """‖Ã_k − M_k‖_F ≤ √(2k)·2(σ_{k+1} + ‖E‖₂): the difference has rank ≤ 2k."""
    return math.sqrt(2.0 * k) * deterministic_spectral_bound(sigma_k1, noise_norm)


def analyze_gauss_captured_variance_bound(k: int, noise_norm: float) -> float:
    """tr(V_kᵀMV_k) − tr(V̂ᵀMV̂) ≤ 2k‖E‖₂ for the top-k eigenvectors V̂ of M + E, every draw.

    V̂ maximises tr(Vᵀ(M+E)V), so tr(V̂ᵀMV̂) ≥ tr(V_kᵀMV_k) + tr(V_kᵀEV_k) − tr(V̂ᵀEV̂), and
    each trace of E over k orthonormal vectors is at most k‖E‖₂. This is the explicit form
    of the O(k√d·σ) captured-variance guarantee of Analyze Gauss (Dwork, Talwar, Thakurta &
    Zhang, STOC 2014), with ‖E‖₂ ≤ B w.p. ≥ 1 − β.
    """
    return 2.0 * k * noise_norm


def mangoubi_vishnoi_bound(spectrum, k: int, d: int, noise_scale: float, *, constant: float = 1.0) -> float:
    """C·√(kd)·σ·σ_k/(σ_k − σ_{k+1}): the shape of Mangoubi & Vishnoi's complex-Gaussian bound.

    Mangoubi & Vishnoi (arXiv:2306.16648, main utility theorem; J. ACM version arXiv:2502.07657) bound
    E‖M̂_k − M_k‖_F by Õ(√(kd))·σ·σ_k/(σ_k − σ_{k+1}) when σ_k − σ_{k+1} is of order √d·σ or
    more. The Õ hides a constant and polylog factors that the paper does not give; we
    expose them as ``constant`` (default 1) so that reported ratios error/bound are honest
    about it. Returns ``inf`` when σ_k = σ_{k+1}.
    """
    s = _spectrum(spectrum)
    gap = s[k - 1] - (s[k] if k < len(s) else 0.0)
    if gap <= 0:
        return math.inf
    return constant * math.sqrt(k * d) * noise_scale * s[k - 1] / gap


def re_analyze_gauss_bound(spectrum, k: int, noise_scale: float, *, constant: float = 1.0) -> float:
    """C·σ·√(Σ_{i≤k} Σ_{j>i} (λᵢ − λⱼ)²/(σᵢ − σⱼ)²), λ = (σ₁, …, σ_k, 0, …, 0).

    The Frobenius bound of Re-Analyze Gauss (Mangoubi & Vishnoi, arXiv:2211.06418, main theorem),
    valid when every gap σᵢ − σᵢ₊₁, i ≤ k, is at least about 8√d·σ; the paper's constant is
    exposed as ``constant`` (default 1). Terms with i, j ≤ k equal 1. Returns ``inf`` if a
    gap involved is zero.
    """
    s = _spectrum(spectrum)
    d = len(s)
    lam = np.where(np.arange(d) < k, s, 0.0)
    total = 0.0
    for i in range(k):
        diff_s = s[i] - s[i + 1:]
        diff_l = lam[i] - lam[i + 1:]
        if np.any(diff_s <= 0) and np.any((diff_l != 0) & (diff_s <= 0)):
            return math.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(diff_l == 0, 0.0, (diff_l / diff_s) ** 2)
        total += float(ratio.sum())
    return constant * noise_scale * math.sqrt(total)


@dataclass(frozen=True)
class TheoryBounds:
    """Bounds for one (matrix, k, mechanism, σ) at failure probability β (non-private analysis).

    Attributes
    ----------
    noise_norm : float
        B with P(‖E‖₂ > B) ≤ β.
    spectral, frobenius : float
        The deterministic bounds evaluated at ‖E‖₂ = B: they hold w.p. ≥ 1 − β.
    captured_variance_loss : float
        2kB (Analyze Gauss), w.p. ≥ 1 − β.
    mangoubi_vishnoi, re_analyze_gauss : float
        The expected-error bound shapes with constant 1.
    mv_condition, rag_condition : bool
        σ_k − σ_{k+1} ≥ 4√dσ (MV; see ``gap_conditions``) and every top-k gap ≥ 8√dσ (RAG).
    realified : bool
        For the complex mechanism the real output's error is up to 2× the Hermitian
        output's; the spectral and Frobenius bounds above already include that factor.
    """

    noise_norm: float
    spectral: float
    frobenius: float
    captured_variance_loss: float
    mangoubi_vishnoi: float
    re_analyze_gauss: float
    mv_condition: bool
    rag_condition: bool
    realified: bool


def theory_bounds(
    m, k: int, *, noise_scale: float, noise_shape: str = "isotropic", failure_probability: float = 0.05
) -> TheoryBounds:
    """All bounds of this module for the matrix ``m`` (shape (d, d)) or its spectrum (shape (d,)).

    ``noise_shape``: "isotropic", "upper_triangular" or "hermitian" (complex mechanism).
    """
    s = _spectrum(m)
    d = len(s)
    k = check_k(k, d)
    b = noise_norm_bound(noise_shape, d, noise_scale, failure_probability)
    sk1 = s[k] if k < d else 0.0
    factor = 2.0 if noise_shape == "hermitian" else 1.0
    gaps = s[:k] - np.append(s[1:], 0.0)[:k]
    root = math.sqrt(d) * noise_scale
    return TheoryBounds(
        noise_norm=b,
        spectral=factor * deterministic_spectral_bound(sk1, b),
        frobenius=factor * deterministic_frobenius_bound(k, sk1, b),
        captured_variance_loss=analyze_gauss_captured_variance_bound(k, b),
        mangoubi_vishnoi=mangoubi_vishnoi_bound(s, k, d, noise_scale),
        re_analyze_gauss=re_analyze_gauss_bound(s, k, noise_scale),
        mv_condition=bool(gaps[k - 1] >= 4.0 * root),
        rag_condition=bool(np.all(gaps >= 8.0 * root)),
        realified=noise_shape == "hermitian",
    )
