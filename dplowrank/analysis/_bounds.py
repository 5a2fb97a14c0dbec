"""Error bounds for private rank-k approximation, for a *known* matrix: analysis tools.

Everything here takes the true matrix (or its spectrum) and is therefore NOT private: use
it to plan (which mechanism, which ε, which k) on public or synthetic data, or to check
the theory, never on private data whose results you publish.

Notation: M symmetric PSD with eigenvalues σ₁ ≥ … ≥ σ_d, M_k its best rank-k
approximation, E the noise, Ã_k the rank-k output (top-k eigenpairs of M + E), σ the
noise scale, B a bound on ‖E‖₂ (see ``noise_norm_bound``). Which paper each bound comes from,
and which constants the library picks where the paper leaves them implicit: ``_theorems``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_choice, check_k
from ..diagnostics import C_MV, C_RAG, SHAPES, applies, gap_threshold, isotropic_equivalent_scale, noise_norm_bound

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


def _tail_norm(s: np.ndarray, k: int) -> float:
    """‖M − M_k‖₂ for the spectrum ``s`` (descending): σ_{k+1} for PSD M, max(|σ_{k+1}|, |σ_d|) in general."""
    return float(max(abs(s[k]), abs(s[-1]))) if k < len(s) else 0.0


def deterministic_spectral_bound(tail_norm: float, noise_norm: float, *, realified: bool = False) -> float:
    """‖Ã_k − M_k‖₂ ≤ 2(‖M − M_k‖₂ + ‖E‖₂), for every draw (× 2 for the realified complex output).

    ``tail_norm`` is ‖M − M_k‖₂: σ_{k+1} for PSD M (a Gram matrix), max(|σ_{k+1}|, |σ_d|) for
    a symmetric M with negative eigenvalues (M_k keeps the k algebraically largest). With
    A = M + E: ‖A − Ã_k‖₂ ≤ ‖M − M_k‖₂ + ‖E‖₂ (Weyl, on λ_{k+1}(A) and λ_d(A)) and
    ‖A − M_k‖₂ ≤ ‖M − M_k‖₂ + ‖E‖₂; the triangle inequality adds the two. The constant 2 is
    attained: M = s·(I_k ⊕ 0), E = e·(−I_k ⊕ I_k) with s ↑ 2e swaps the top-k subspace and
    gives ‖Ã_k − M_k‖₂ → 2e = the bound (tested).

    ``realified``: the complex mechanism's real output R, the best real rank-k approximation
    of Re(H_k), satisfies ‖R − M_k‖ ≤ ‖R − Re H_k‖ + ‖Re H_k − M_k‖ ≤ 2‖Re H_k − M_k‖ ≤ 2‖H_k − M_k‖
    (Eckart–Young–Mirsky against the rank-k M_k; ‖Re X‖ ≤ ‖X‖), so the bound doubles.
    """
    bound = 2.0 * (abs(tail_norm) + noise_norm)
    return 2.0 * bound if realified else bound


def deterministic_frobenius_bound(k: int, tail_norm: float, noise_norm: float, *, realified: bool = False) -> float:
    """‖Ã_k − M_k‖_F ≤ √(2k)·2(‖M − M_k‖₂ + ‖E‖₂) (× 2 realified): the difference has rank ≤ 2k.

    Not tight in the constant: the swap example of :func:`deterministic_spectral_bound` gives
    ‖Ã_k − M_k‖_F = √(5k)·e against √(8k)·e, a ratio √(5/8) ≈ 0.79 (tested; random search
    found nothing larger).
    """
    return math.sqrt(2.0 * k) * deterministic_spectral_bound(tail_norm, noise_norm, realified=realified)


def analyze_gauss_captured_variance_bound(k: int, noise_norm: float) -> float:
    """tr(V_kᵀMV_k) − tr(V̂ᵀMV̂) ≤ 2k‖E‖₂ for the top-k eigenvectors V̂ of M + E, every draw.

    V̂ maximises tr(Vᵀ(M+E)V), so tr(V̂ᵀMV̂) ≥ tr(V_kᵀMV_k) + tr(V_kᵀEV_k) − tr(V̂ᵀEV̂), and
    each trace of E over k orthonormal vectors is at most k‖E‖₂ in absolute value. The
    constant is attained by the swap example (loss k·s → 2k·e). This is the explicit form of
    the gap-free O(k√d·σ) captured-variance guarantee of Analyze Gauss (Dwork, Talwar,
    Thakurta & Zhang, STOC 2014; see ``_theorems``), with ‖E‖₂ ≤ B w.p. ≥ 1 − β. It holds for
    any real symmetric noise, not for the realified complex output.
    """
    return 2.0 * k * noise_norm


def mangoubi_vishnoi_bound(spectrum, k: int, d: int, noise_scale: float, *, noise_shape: str = "hermitian",
                           constant: float = C_MV) -> float:
    """C·√(kd)·σ·σ_k/(σ_k − σ_{k+1}): Mangoubi & Vishnoi's complex-Gaussian bound, C = 2 by default.

    Mangoubi & Vishnoi (arXiv:2306.16648; J. ACM version arXiv:2502.07657) bound
    E‖M̂_k − M_k‖_F by Õ(√(kd))·σ·σ_k/(σ_k − σ_{k+1}) for the complex Gaussian mechanism when
    σ_k − σ_{k+1} is of order √d·σ or more (see ``_theorems`` for what the paper leaves implicit
    and what the library picks: C = 2, no log factor). σ is the GUE scale of the complex noise
    (E|Z_ij|² = σ²). The theorem covers only ``noise_shape="hermitian"``: any other shape raises
    ``ValueError``. Returns ``inf`` when σ_k ≤ σ_{k+1}. σ_{d+1} = 0 (k = d).
    """
    if noise_shape != "hermitian":
        raise ValueError(
            "the Mangoubi-Vishnoi bound covers the complex mechanism (noise_shape='hermitian') only, "
            f"got {noise_shape!r}"
        )
    s = _spectrum(spectrum)
    gap = s[k - 1] - (s[k] if k < len(s) else 0.0)
    if gap <= 0:
        return math.inf
    return constant * math.sqrt(k * d) * noise_scale * s[k - 1] / gap


def re_analyze_gauss_bound(spectrum, k: int, noise_scale: float, *, noise_shape: str = "isotropic",
                           constant: float = C_RAG) -> float:
    """C·σ_iso·√(Σ_{i≤k} Σ_{j>i} (λᵢ − λⱼ)²/(σᵢ − σⱼ)²), λ = (σ₁, …, σ_k, 0, …, 0), C = 2 by default.

    The Frobenius bound of Re-Analyze Gauss (Mangoubi & Vishnoi, NeurIPS 2022,
    arXiv:2211.06418), valid when every gap σᵢ − σᵢ₊₁, i ≤ k, is at least a constant times
    √d·σ_iso (see ``_theorems``: the library picks 8 and C = 2). σ_iso is the isotropic scale
    with the release's off-diagonal variance: σ for ``"isotropic"``, √2σ for
    ``"upper_triangular"`` (an extension of the theorem, which is proved for GOE noise). The
    theorem is for real noise: ``"hermitian"`` raises ``ValueError``. Terms with i, j ≤ k
    equal 1. Returns ``inf`` if a gap involved is zero.
    """
    if noise_shape == "hermitian":
        raise ValueError("the Re-Analyze Gauss bound covers real noise shapes only, got noise_shape='hermitian'")
    sigma_iso = isotropic_equivalent_scale(noise_shape, noise_scale)
    s = _spectrum(spectrum)
    d = len(s)
    lam = np.where(np.arange(d) < k, s, 0.0)
    total = 0.0
    for i in range(k):
        diff_s = s[i] - s[i + 1:]
        diff_l = lam[i] - lam[i + 1:]
        if np.any((diff_l != 0) & (diff_s <= 0)):
            return math.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(diff_l == 0, 0.0, (diff_l / diff_s) ** 2)
        total += float(ratio.sum())
    return constant * sigma_iso * math.sqrt(total)


@dataclass(frozen=True)
class TheoryBounds:
    """Bounds for one (matrix, k, noise shape, σ) at failure probability β (non-private analysis).

    Attributes
    ----------
    noise_norm : float
        B with P(‖E‖₂ > B) ≤ β.
    spectral, frobenius : float
        The deterministic bounds evaluated at ‖E‖₂ = B: they hold w.p. ≥ 1 − β.
    captured_variance_loss : float or None
        2kB (Analyze Gauss), w.p. ≥ 1 − β; None for the complex mechanism.
    mangoubi_vishnoi : float or None
        The complex-mechanism bound (C_MV = 2); None for real noise shapes, which it does not cover.
    re_analyze_gauss : float or None
        The real-noise bound at σ_iso (C_RAG = 2); None for the complex mechanism.
    mv_condition, rag_condition : bool or None
        Whether the true gaps meet the applicable theorem's condition (σ_k − σ_{k+1} ≥ 4√dσ;
        every top-k gap ≥ 8√dσ_iso); None where the theorem does not cover the shape.
    realified : bool
        For the complex mechanism the real output's error is up to 2× the Hermitian
        output's; the spectral and Frobenius bounds above already include that factor.
    """

    noise_norm: float
    spectral: float
    frobenius: float
    captured_variance_loss: float | None
    mangoubi_vishnoi: float | None
    re_analyze_gauss: float | None
    mv_condition: bool | None
    rag_condition: bool | None
    realified: bool


def _true_gaps(s: np.ndarray, k: int) -> np.ndarray:
    """σᵢ − σᵢ₊₁ for i = 1, …, k (σ_{d+1} = 0), shape (k,)."""
    return s[:k] - np.append(s[1:], 0.0)[:k]


def theory_bounds(
    m, k: int, *, noise_scale: float, noise_shape: str = "isotropic", failure_probability: float = 0.05
) -> TheoryBounds:
    """All bounds of this module that apply to ``noise_shape``, for ``m`` (shape (d, d)) or its spectrum (shape (d,)).

    ``noise_shape``: "isotropic", "upper_triangular" or "hermitian" (complex mechanism).
    """
    check_choice(noise_shape, "noise_shape", SHAPES)
    s = _spectrum(m)
    d = len(s)
    k = check_k(k, d)
    b = noise_norm_bound(noise_shape, d, noise_scale, failure_probability)
    tail = _tail_norm(s, k)
    realified = noise_shape == "hermitian"
    gaps = _true_gaps(s, k)
    mv = applies("mangoubi_vishnoi", noise_shape)
    rag = applies("re_analyze_gauss", noise_shape)
    mv_thr = gap_threshold("mangoubi_vishnoi", d, noise_scale, noise_shape)
    rag_thr = gap_threshold("re_analyze_gauss", d, noise_scale, noise_shape)
    return TheoryBounds(
        noise_norm=b,
        spectral=deterministic_spectral_bound(tail, b, realified=realified),
        frobenius=deterministic_frobenius_bound(k, tail, b, realified=realified),
        captured_variance_loss=None if realified else analyze_gauss_captured_variance_bound(k, b),
        mangoubi_vishnoi=mangoubi_vishnoi_bound(s, k, d, noise_scale) if mv else None,
        re_analyze_gauss=re_analyze_gauss_bound(s, k, noise_scale, noise_shape=noise_shape) if rag else None,
        mv_condition=bool(gaps[k - 1] >= mv_thr) if mv else None,
        rag_condition=bool(np.all(gaps >= rag_thr)) if rag else None,
        realified=realified,
    )
