"""Diagnostics of a release, computed from the release alone: post-processing, free.

Given the released spectrum λ̃₁ ≥ … ≥ λ̃_{k+1} of the noisy matrix, the noise scale and
shape, this reports how large the noise is, what the true eigenvalues and gaps can be
(Weyl: |λᵢ − λ̃ᵢ| ≤ ‖E‖₂ ≤ B with probability ≥ 1 − β), which theorem's gap condition the
true matrix meets, and the largest k the data support. Nothing here touches private data,
so none of it costs privacy.

Gap conditions (thresholds on the true gaps; what the papers leave implicit and what the
library picks is in ``_theorems``):

* ``"mangoubi_vishnoi"`` (covers the complex mechanism, arXiv:2306.16648): the single gap
  σ_k − σ_{k+1} ≥ 4√dσ, twice the GUE edge 2√dσ.
* ``"re_analyze_gauss"`` (covers the real mechanisms, arXiv:2211.06418): every gap
  σᵢ − σᵢ₊₁, i ≤ k, at least 8√d·σ_iso, σ_iso = σ (isotropic) or √2σ (upper-triangular:
  the library's extension at the GOE scale with the same off-diagonal variance).
* ``"analyze_gauss"`` (real mechanisms, Dwork et al. 2014): no gap condition (captured-variance
  bound).

Every condition is judged for every release; the one that does not cover the release's
mechanism is shown for comparison (the other mechanism at the same σ, i.e. the same privacy
cost). A condition is "met" when the lower confidence bound (Weyl: g̃ᵢ − 2B) of every gap it
involves clears its threshold, "not met" when an upper bound falls short, and "uncertain"
otherwise.

Two ranks, because they answer two questions:

* **Recommended k** (``recommended_k``, ``recommended_by = "noise_edge"``): the *signal rank*,
  the number of released eigenvalues above the noise edge e = c√dσ (plus the finite-d
  Tracy–Widom margin e·d^(−2/3) that pure noise crosses in ≈ 1 % of draws; see ``_spike``). In the spiked Wigner
  model (arXiv:0910.2120, see ``_spike``) exactly those eigenvalues are outliers whose
  eigenvectors carry information about the truth (predicted squared overlap
  1 − e²/4θ² > 0); an eigenvector inside the bulk is, to first order, a random direction.
  It is what :meth:`~dplowrank.LowRankRelease.denoised` keeps and what
  :class:`dplowrank.PrivatePCA` picks with ``n_components="auto"``. The recommendation
  follows the edge because it is the point where a component stops paying for itself:
  the Frobenius-optimal eigenvalue θ(1 − e²/4θ²) of a component is positive above it and
  zero below.
* **Certified k** (``certified_k``, ``certified_by``): the largest k' ≤ k for which the
  condition of the theorem that covers the release's mechanism is met, judged on the
  conservative (Weyl lower) gap bounds: Mangoubi–Vishnoi for the complex mechanism (only the
  k'-th gap must clear 4√dσ), Re-Analyze Gauss for the real ones (gaps 1, …, k' must all clear
  8√dσ_iso). Up to k' the theorem's error bound is *guaranteed* (with probability ≥ 1 − β);
  it needs gaps of several noise edges plus 2B of slack, so it is far more conservative
  than the signal rank (digits at ε = 1: certified 0, signal rank 1). Analyze Gauss's
  captured-variance bound needs no gap, so it never selects a k. ``recommended_k_by_theorem``
  gives the answer under each gap theorem. When k = d there is no λ_{d+1}; the d-th gap is
  taken as σ_d − 0 (M is a Gram matrix, PSD), with lower bound λ̃_d − B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ._noise import noise_edge, noise_norm_bound
from ._spike import signal_rank
from ._theorems import GAP_THEOREMS, applies, gap_threshold, primary_theorem, supported_k

__all__ = ["GapCondition", "GapReport", "ReleasedSpectrum", "diagnose"]


@runtime_checkable
class ReleasedSpectrum(Protocol):
    """What :func:`diagnose` reads of a release (:class:`dplowrank.LowRankRelease` has it).

    Defined here, below the release, so that the release can offer ``diagnose()`` without
    this layer importing it.
    """

    spectrum: torch.Tensor | None
    dim: int
    k: int
    noise_shape: str
    noise_scale: float
    mechanism: str
    epsilon: float | None
    delta: float | None


@dataclass(frozen=True)
class GapCondition:
    """One theorem's gap condition, judged from a release."""

    theorem: str
    applies_to: str
    threshold: float
    status: str  # "met", "not met", "uncertain", "no condition"
    margin: float  # (worst gap lower bound) / threshold; ≥ 1 means met
    applies: bool = True  # whether the theorem covers the release's mechanism (else: a comparison)
    supported_k: int | None = None  # the largest k' ≤ k whose gaps meet the condition; None: no gap condition

    @property
    def met(self) -> bool:
        return self.status in ("met", "no condition")


@dataclass(frozen=True)
class GapReport:
    """Everything :func:`diagnose` finds; ``str(report)`` is a readable table.

    Attributes
    ----------
    spectrum : ndarray of shape (m,)
        Released top eigenvalues λ̃ (m = k + 1 when k < d).
    noise_edge : float
        c√dσ for the release's noise shape.
    noise_bound : float
        B: ‖E‖₂ ≤ B with probability ≥ 1 − ``failure_probability``.
    gaps : ndarray of shape (m - 1,)
        λ̃ᵢ − λ̃ᵢ₊₁.
    gaps_in_edges : ndarray of shape (m - 1,)
        The gaps in units of the noise edge.
    eigenvalue_intervals : ndarray of shape (m, 2)
        [λ̃ᵢ − B, λ̃ᵢ + B] ∋ λᵢ(M) (Weyl), with probability ≥ 1 − β jointly.
    gap_intervals : ndarray of shape (m - 1, 2)
        [gᵢ − 2B, gᵢ + 2B] ∋ true gap.
    conditions : tuple of GapCondition
        Every theorem's condition; ``applies`` marks the ones that cover the release.
    recommended_k : int
        The signal rank: how many of the top k released eigenvalues clear the noise edge
        (0 when none does). See the module docstring for why the recommendation follows it.
    recommended_by : str
        ``"noise_edge"``.
    recommended_k_by_theorem : dict
        The largest supported k' under each gap theorem (comparison for the other one).
    certified_k : int
        The largest k' ≤ k meeting ``certified_by``'s gap condition on the conservative
        bounds (the theorem's error bound is then guaranteed); 0 when none does.
    certified_by : str
        The theorem that covers the release's mechanism.
    """

    k: int
    d: int
    mechanism: str
    noise_shape: str
    noise_scale: float
    epsilon: float | None
    delta: float | None
    failure_probability: float
    spectrum: np.ndarray
    noise_edge: float
    noise_bound: float
    gaps: np.ndarray
    gaps_in_edges: np.ndarray
    eigenvalue_intervals: np.ndarray
    gap_intervals: np.ndarray
    conditions: tuple
    recommended_k: int
    recommended_by: str = "noise_edge"
    recommended_k_by_theorem: dict | None = None
    certified_k: int = 0
    certified_by: str = "re_analyze_gauss"

    def condition(self, theorem: str) -> GapCondition:
        for c in self.conditions:
            if c.theorem == theorem:
                return c
        raise KeyError(f"no condition named {theorem!r}; have {[c.theorem for c in self.conditions]}")

    def table(self) -> str:
        eps = "n/a" if self.epsilon is None else f"{self.epsilon:.4g}"
        lines = [
            f"rank-{self.k} release, d={self.d}, mechanism={self.mechanism} ({self.noise_shape}), "
            f"epsilon={eps}, delta={self.delta}, sigma={self.noise_scale:.4g}",
            f"noise edge c*sqrt(d)*sigma = {self.noise_edge:.4g}; ||E||_2 <= B = {self.noise_bound:.4g} "
            f"with prob >= {1 - self.failure_probability:g}  (diagnostics are post-processing: free)",
            "",
            f"{'i':>3} {'eigenvalue':>12} {'true in':>25} {'gap i,i+1':>11} {'gap/edge':>9} {'true gap in':>25}",
        ]
        m = len(self.spectrum)
        for i in range(m):
            lo, hi = self.eigenvalue_intervals[i]
            row = f"{i + 1:>3} {self.spectrum[i]:>12.5g} {f'[{lo:.4g}, {hi:.4g}]':>25}"
            if i < m - 1:
                glo, ghi = self.gap_intervals[i]
                row += f" {self.gaps[i]:>11.4g} {self.gaps_in_edges[i]:>9.2f} {f'[{glo:.4g}, {ghi:.4g}]':>25}"
            lines.append(row)
        lines.append("")
        lines.append(f"{'condition':<18} {'covers':<24} {'threshold':>10} {'status':>13} {'margin':>8} "
                     f"{'k ok':>5}  applies")
        for c in self.conditions:
            thr = "-" if c.status == "no condition" else f"{c.threshold:.4g}"
            margin = "-" if c.status == "no condition" else f"{c.margin:.2f}"
            kk = "-" if c.supported_k is None else str(c.supported_k)
            app = "yes" if c.applies else "no (comparison)"
            lines.append(f"{c.theorem:<18} {c.applies_to:<24} {thr:>10} {c.status:>13} {margin:>8} {kk:>5}  {app}")
        lines.append("")
        lines.append(
            f"recommended k: {self.recommended_k}  (eigenvalues above the noise edge {self.noise_edge:.4g} "
            f"+ finite-d margin: "
            "they carry signal; release.denoised() keeps them with debiased eigenvalues)"
        )
        lines.append(
            f"certified k:   {self.certified_k}  (largest k whose conservative gap bounds meet "
            f"{self.certified_by}'s condition: its error bound is guaranteed"
            + (f"; no k <= {self.k} does)" if self.certified_k == 0 else ")")
        )
        if self.recommended_k < self.k:
            lines.append(
                f"components {self.recommended_k + 1}..{self.k} lie inside the noise bulk: to first order "
                "random directions; more budget (epsilon) or more rows raise the signal rank"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _judge(lower: np.ndarray, upper: np.ndarray, threshold: float) -> tuple[str, float]:
    margin = float(lower.min() / threshold)
    if np.all(lower >= threshold):
        return "met", margin
    if np.any(upper < threshold):
        return "not met", margin
    return "uncertain", margin


_COVERS = {
    "mangoubi_vishnoi": "complex (single gap k)",
    "re_analyze_gauss": "real (every gap <= k)",
    "analyze_gauss": "real (gap-free)",
}


def diagnose(release, *, failure_probability: float = 0.05) -> GapReport:
    """Gap and noise diagnostics of a :class:`~dplowrank.LowRankRelease` (post-processing, free).

    Parameters
    ----------
    release : LowRankRelease
        Or anything with the attributes of :class:`ReleasedSpectrum`; must carry its
        ``spectrum`` of shape (k + 1,) (or (k,) when k = d; releases made by this library do).
    failure_probability : float, default 0.05
        β: the intervals hold jointly with probability ≥ 1 − β over the noise.
    """
    if not isinstance(release, ReleasedSpectrum):
        raise TypeError(
            "release must be a LowRankRelease (or have its fields spectrum, dim, k, noise_shape, "
            f"noise_scale, mechanism, epsilon, delta), got {type(release).__name__}"
        )
    if release.spectrum is None:
        raise ValueError("this release has no spectrum (λ_{k+1}); re-release with dplowrank >= 0.1")
    lam = release.spectrum.detach().cpu().double().numpy()
    d, k = release.dim, release.k
    shape = release.noise_shape
    sigma = release.noise_scale
    edge = noise_edge(shape, d, sigma)
    b = noise_norm_bound(shape, d, sigma, failure_probability)
    gaps = lam[:-1] - lam[1:]
    # The last released value is λ_{k+1} as the solver found it: the true one is up to
    # `spectrum_slack` above it (see LowRankRelease.spectrum_slack).
    slack = np.zeros_like(lam)
    if len(lam) > k:
        slack[k] = float(getattr(release, "spectrum_slack", 0.0))
    gap_lo, gap_hi = gaps - 2 * b - slack[1:], gaps + 2 * b
    # Gaps 1..k of the true matrix (shape (k,)); with k = d the d-th is σ_d − 0 (M is PSD).
    if len(gaps) < k:
        k_lo, k_hi = np.append(gap_lo, lam[-1] - b), np.append(gap_hi, lam[-1] + b)
    else:
        k_lo, k_hi = gap_lo[:k], gap_hi[:k]
    conds, by_theorem = [], {}
    for theorem in GAP_THEOREMS:
        thr = gap_threshold(theorem, d, sigma, shape)
        sel = slice(k - 1, k) if theorem == "mangoubi_vishnoi" else slice(0, k)
        st, mg = _judge(k_lo[sel], k_hi[sel], thr)
        by_theorem[theorem] = supported_k(theorem, k_lo, thr)
        conds.append(GapCondition(theorem, _COVERS[theorem], thr, st, mg, applies(theorem, shape),
                                  by_theorem[theorem]))
    conds.append(GapCondition("analyze_gauss", _COVERS["analyze_gauss"], 0.0, "no condition", math.inf,
                              applies("analyze_gauss", shape), None))
    primary = primary_theorem(shape)
    return GapReport(
        k=k, d=d, mechanism=release.mechanism, noise_shape=shape, noise_scale=sigma,
        epsilon=release.epsilon, delta=release.delta, failure_probability=failure_probability,
        spectrum=lam, noise_edge=edge, noise_bound=b, gaps=gaps, gaps_in_edges=gaps / edge,
        eigenvalue_intervals=np.stack([lam - b, lam + slack + b], axis=1),
        gap_intervals=np.stack([gap_lo, gap_hi], axis=1),
        conditions=tuple(conds), recommended_k=signal_rank(torch.from_numpy(lam[:k]), edge, d),
        recommended_by="noise_edge", recommended_k_by_theorem=by_theorem,
        certified_k=by_theorem[primary], certified_by=primary,
    )
