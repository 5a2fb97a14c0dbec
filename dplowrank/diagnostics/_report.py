"""Diagnostics of a release, computed from the release alone: post-processing, free.

Given the released spectrum λ̃₁ ≥ … ≥ λ̃_{k+1} of the noisy matrix, the noise scale and
shape, this reports how large the noise is, what the true eigenvalues and gaps can be
(Weyl: |λᵢ − λ̃ᵢ| ≤ ‖E‖₂ ≤ B with probability ≥ 1 − β), which theorem's gap condition the
true matrix meets, and the largest k the data support. Nothing here touches private data,
so none of it costs privacy.

Gap conditions (thresholds on the true gaps; the papers' constants are implicit, ours are
stated):

* ``"mangoubi_vishnoi"`` (complex mechanism, arXiv:2306.16648): the single gap
  σ_k − σ_{k+1} ≥ 2·edge, edge = 2√dσ the GUE edge — i.e. 4√dσ, so the gap exceeds the
  whole width of the noise spectrum.
* ``"re_analyze_gauss"`` (real mechanism, arXiv:2211.06418): every gap σᵢ − σᵢ₊₁, i ≤ k,
  at least 8√dσ.
* ``"analyze_gauss"`` (real, Dwork et al. 2014): no gap condition (captured-variance bound).

A condition is "met" when the lower confidence bound of every gap it involves clears its
threshold, "not met" when an upper bound falls short, and "uncertain" otherwise.

The recommended k is the largest k' ≤ k whose gap lower bound λ̃_{k'} − λ̃_{k'+1} − 2B is at
least 2·edge of the release's own noise shape: the k'-th gap of the true matrix is then
certainly wider than the noise, so the top-k' subspace is identifiable from the release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._noise import noise_edge, noise_norm_bound

__all__ = ["GapCondition", "GapReport", "diagnose"]


@dataclass(frozen=True)
class GapCondition:
    """One theorem's gap condition, judged from a release."""

    theorem: str
    applies_to: str
    threshold: float
    status: str  # "met", "not met", "uncertain", "no condition"
    margin: float  # (worst gap lower bound) / threshold; ≥ 1 means met

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
    recommended_k : int
        0 when no k ≤ k_released is supported.
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
        lines.append(f"{'condition':<18} {'for':<22} {'threshold':>10} {'status':>13} {'margin':>8}")
        for c in self.conditions:
            thr = "-" if c.status == "no condition" else f"{c.threshold:.4g}"
            margin = "-" if c.status == "no condition" else f"{c.margin:.2f}"
            lines.append(f"{c.theorem:<18} {c.applies_to:<22} {thr:>10} {c.status:>13} {margin:>8}")
        lines.append("")
        lines.append(
            f"recommended k: {self.recommended_k}"
            + ("  (no k <= %d has a gap certainly wider than the noise)" % self.k if self.recommended_k == 0 else "")
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


def diagnose(release, *, failure_probability: float = 0.05) -> GapReport:
    """Gap and noise diagnostics of a :class:`~dplowrank.LowRankRelease` (post-processing, free).

    Parameters
    ----------
    release : LowRankRelease
        Must carry its ``spectrum`` (releases made by this library do).
    failure_probability : float, default 0.05
        β: the intervals hold jointly with probability ≥ 1 − β over the noise.
    """
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
    root = math.sqrt(d) * sigma
    conds = []
    if k < d:
        mv_thr = 2 * noise_edge("hermitian", d, sigma)  # 4√dσ
        st, mg = _judge(gap_lo[k - 1:k], gap_hi[k - 1:k], mv_thr)
        conds.append(GapCondition("mangoubi_vishnoi", "complex (single gap)", mv_thr, st, mg))
        rag_thr = 8.0 * root
        st, mg = _judge(gap_lo[:k], gap_hi[:k], rag_thr)
        conds.append(GapCondition("re_analyze_gauss", "real (every top-k gap)", rag_thr, st, mg))
    conds.append(GapCondition("analyze_gauss", "real (gap-free)", 0.0, "no condition", math.inf))
    recommended = 0
    for kk in range(min(k, len(gaps)), 0, -1):
        if gap_lo[kk - 1] >= 2 * edge:
            recommended = kk
            break
    if k == d:
        recommended = d
    return GapReport(
        k=k, d=d, mechanism=release.mechanism, noise_shape=shape, noise_scale=sigma,
        epsilon=release.epsilon, delta=release.delta, failure_probability=failure_probability,
        spectrum=lam, noise_edge=edge, noise_bound=b, gaps=gaps, gaps_in_edges=gaps / edge,
        eigenvalue_intervals=np.stack([lam - b, lam + slack + b], axis=1),
        gap_intervals=np.stack([gap_lo, gap_hi], axis=1),
        conditions=tuple(conds), recommended_k=recommended,
    )
