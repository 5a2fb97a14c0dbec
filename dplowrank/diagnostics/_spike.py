"""Spiked-Wigner shrinkage of a noisy spectrum: the Frobenius-optimal eigenvalues of a release.

A release is the top of the spectrum of M + E, E a Wigner matrix of scale σ whose spectrum
fills [−e, e] (e = :func:`~dplowrank.diagnostics.noise_edge`). In the spiked Wigner model
(Benaych-Georges & Nadakuditi, arXiv:0910.2120, Thm 2.1 for Wigner noise; Capitaine,
Donati-Martin & Féral 2009) a true eigenvalue θ > e/2 appears outside the bulk at

    λ̃ = θ + e²/(4θ),                                         (BBP outlier location)

and its eigenvector has squared overlap 1 − e²/(4θ²) with the true one, while an eigenvalue
θ ≤ e/2 stays inside the bulk and its eigenvector carries (asymptotically) no information.
Inverting on the outlier branch gives θ = (λ̃ + √(λ̃² − e²))/2 for λ̃ > e. Given only the noisy
vector v̂ (overlap² c² with the true v), the eigenvalue t that minimises
E‖t·v̂v̂ᵀ − θ·vvᵀ‖_F is t = θ·c² = θ·(1 − e²/4θ²): the *shrunk* eigenvalue. It is continuous
and vanishes at the edge (λ̃ = e ⇒ θ = e/2 ⇒ t = 0), and inside the bulk the weight is zero.

Which eigenvalues to *count* as spikes needs one more fact: at finite d the largest
eigenvalue of pure noise fluctuates around the edge on the Tracy–Widom scale e·d^(−2/3)/2
(Tracy & Widom 1996; GOE: λ_max ≈ e + (e/2)·d^(−2/3)·TW₁), and exceeds the edge in about 17 % of
draws (P(TW₁ > 0) ≈ 0.17). Just above the edge the inverse map has a square-root slope, so
such a noise eigenvalue would get a sizeable shrunk value (λ̃ = 1.13·e gives t ≈ 0.53·e). The
spike threshold is therefore e·(1 + d^(−2/3)) (:func:`signal_threshold`), 2 TW units above the
edge, which pure GOE noise exceeds with probability ≈ 1 % (the 99 % quantile of TW₁ is 2.02;
TW₂, for the Hermitian noise, is lighter still); the values above it are read with the
asymptotic formulas. The margin vanishes as d grows.

Everything here is a function of the released spectrum and the public noise scale: free
post-processing. Shared by :meth:`dplowrank.LowRankRelease.denoised`, the diagnostics' signal
rank, the private PCA estimator, and the compression estimator of activation Grams.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SpikeEstimate", "signal_rank", "signal_threshold", "spike_estimate"]


class SpikeEstimate:
    """The spike reading of a noisy spectrum (see the module docstring).

    Attributes
    ----------
    is_spike : BoolTensor of shape (m,)
        λ̃ᵢ above the spike threshold: the eigenvalue lies outside the noise bulk.
    theta : Tensor of shape (m,)
        The debiased eigenvalue θᵢ for spikes, 0 elsewhere.
    overlap2 : Tensor of shape (m,)
        The predicted squared overlap 1 − e²/(4θᵢ²) of each spike's eigenvector with the
        truth, 0 elsewhere.
    shrunk : Tensor of shape (m,)
        θᵢ·overlap²ᵢ for spikes, 0 elsewhere: the Frobenius-optimal eigenvalues.
    """

    __slots__ = ("is_spike", "theta", "overlap2", "shrunk")

    def __init__(self, is_spike, theta, overlap2, shrunk):
        self.is_spike, self.theta, self.overlap2, self.shrunk = is_spike, theta, overlap2, shrunk

    @property
    def rank(self) -> int:
        """How many eigenvalues are spikes."""
        return int(self.is_spike.sum())


def spike_estimate(eigenvalues: torch.Tensor, edge: float, d: int | None = None) -> SpikeEstimate:
    """Read a noisy spectrum as spikes of the spiked Wigner model (arXiv:0910.2120, Thm 2.1).

    Parameters
    ----------
    eigenvalues : Tensor of shape (m,)
        Noisy eigenvalues λ̃ (any order), real.
    edge : float
        The noise edge e ≥ 0 of the release's noise shape and scale.
    d : int, optional
        The matrix dimension: spikes are the eigenvalues above :func:`signal_threshold`
        (e·(1 + d^(−2/3))). Without it, above e itself (the asymptotic rule).

    Returns
    -------
    SpikeEstimate
        In float64, on the eigenvalues' device.
    """
    if not (isinstance(edge, (int, float)) and math.isfinite(edge) and edge >= 0.0):
        raise ValueError(f"edge must be a finite number >= 0, got {edge!r}")
    lam = torch.as_tensor(eigenvalues).detach().to(torch.float64)
    keep = lam > (edge if d is None else signal_threshold(edge, d))
    root = torch.sqrt((lam * lam - edge * edge).clamp(min=0.0))
    theta = torch.where(keep, 0.5 * (lam + root), torch.zeros_like(lam))
    safe = torch.where(keep, theta, torch.ones_like(lam))
    overlap2 = torch.where(keep, 1.0 - (edge * edge) / (4.0 * safe * safe), torch.zeros_like(lam))
    return SpikeEstimate(keep, theta, overlap2, theta * overlap2)


def signal_threshold(edge: float, d: int) -> float:
    """e·(1 + d^(−2/3)): the edge plus 2 Tracy–Widom units (pure noise exceeds it in ≈ 1 % of draws)."""
    return float(edge) * (1.0 + float(d) ** (-2.0 / 3.0))


def signal_rank(eigenvalues: torch.Tensor, edge: float, d: int) -> int:
    """How many noisy eigenvalues clear :func:`signal_threshold` (the signal rank of a release).

    Parameters
    ----------
    eigenvalues : Tensor of shape (m,)
        Released eigenvalues λ̃ (any order).
    edge : float
        The noise edge e of the release.
    d : int
        The matrix dimension.
    """
    return spike_estimate(eigenvalues, edge, d).rank
