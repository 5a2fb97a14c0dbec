"""Monte Carlo checks of the bounds, and the level-repulsion diagnostic: analysis tools.

Both take the true matrix and draw many releases from it, so they are NOT private: use them
on public or synthetic matrices to see how the bounds behave, never to publish results
about private data.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .._progress import progress
from .._random import resolve_generator
from .._tensor import as_tensor
from .._validation import check_choice, check_k
from ..diagnostics import gap_threshold, noise_norm_bound, primary_theorem
from ..linalg import realify, topk_eigh
from ..mechanisms import NOISE_SHAPES, ComplexGaussianMechanism, GaussianMechanism, calibrate_noise
from ._bounds import (
    _tail_norm,
    analyze_gauss_captured_variance_bound,
    deterministic_frobenius_bound,
    deterministic_spectral_bound,
    mangoubi_vishnoi_bound,
    re_analyze_gauss_bound,
)

__all__ = ["BoundCheck", "RepulsionResult", "check_bounds", "gap_repulsion"]


@dataclass(frozen=True)
class BoundCheck:
    """Result of :func:`check_bounds` (non-private analysis).

    Attributes
    ----------
    frobenius_errors, spectral_errors : ndarray of shape (trials,)
        ‖Ã_k − M_k‖_F and ‖Ã_k − M_k‖₂ of each release (for the complex mechanism: of the
        realified real output).
    captured_variance_loss : ndarray of shape (trials,) or None
        tr(V_kᵀMV_k) − tr(V̂ᵀMV̂) (real mechanisms).
    noise_norms : ndarray of shape (trials,)
        ‖E‖₂ of each draw.
    hold_rates : dict
        Fraction of draws on which each bound held: "deterministic_spectral",
        "deterministic_frobenius", "captured_variance" (per-draw with the actual ‖E‖₂: must
        be 1.0), "high_prob_*" (with B: must be ≥ 1 − β), "noise_norm" (‖E‖₂ ≤ B), and, for
        the expected-error bound that covers the mechanism ("mangoubi_vishnoi" for complex,
        "re_analyze_gauss" for real), the fraction of draws at or below it (informative: the
        guarantee is on the mean; Markov gives ≥ 1 − β at bound/β).
    bounds : dict
        The non-random bounds: "high_prob_spectral", "high_prob_frobenius",
        "high_prob_captured_variance" (real), "noise_norm" (B), and the expected-error bound
        of the theorem that covers the mechanism (library constants, see ``_theorems``).
    conditions : dict
        Whether the true spectrum meets the gap condition of that theorem.
    ratios : dict
        mean error / bound for each bound in ``bounds`` that bounds an error.
    """

    mechanism: str
    noise_shape: str
    k: int
    d: int
    trials: int
    noise_scale: float
    failure_probability: float
    frobenius_errors: np.ndarray
    spectral_errors: np.ndarray
    captured_variance_loss: np.ndarray | None
    noise_norms: np.ndarray
    hold_rates: dict
    bounds: dict
    conditions: dict
    ratios: dict


def _draw_errors(mt: torch.Tensor, m_k: torch.Tensor, noisy: torch.Tensor, k: int):
    """Errors of the rank-k output of one noisy matrix: (‖E‖₂, ‖Ã_k − M_k‖_F, ‖·‖₂, top-k V̂).

    ``mt``, ``m_k``: real Tensors of shape (d, d), the true matrix and its best rank-k part;
    ``noisy``: M + E, real symmetric or complex Hermitian (then the output is realified
    exactly as :func:`dplowrank.release_rank_k` does).
    """
    e_norm = float(torch.linalg.matrix_norm(noisy - mt.to(noisy.dtype), ord=2))
    res = topk_eigh(noisy, k, solver="dense", check=False)
    if noisy.is_complex():
        vals, vecs = realify(res.eigenvalues, res.eigenvectors, k)
    else:
        vals, vecs = res.eigenvalues, res.eigenvectors
    diff = (vecs * vals) @ vecs.T - m_k  # shape: (d, d)
    return e_norm, float(torch.linalg.matrix_norm(diff)), float(torch.linalg.matrix_norm(diff, ord=2)), vecs


def _known_matrix(m: object) -> torch.Tensor:
    """The known matrix of an analysis tool as float64, checked square and finite."""
    mt = as_tensor(m, "m").to(torch.float64)
    if mt.ndim != 2 or mt.shape[0] != mt.shape[1] or mt.shape[0] == 0:
        raise ValueError(f"m must be a non-empty square matrix of shape (d, d), got shape {tuple(mt.shape)}")
    if not bool(torch.isfinite(mt).all()):
        # (an analysis tool, but the matrix may still be private: no value or position)
        raise ValueError("m must be finite; it has a NaN or Inf entry")
    return mt


def check_bounds(
    m,
    k: int,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    sensitivity: float = 1.0,
    noise_scale: float | None = None,
    mechanism: str = "gaussian",
    noise_shape: str = "isotropic",
    trials: int = 200,
    failure_probability: float = 0.05,
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
) -> BoundCheck:
    """Draw ``trials`` releases of the known matrix ``m`` and check every applicable bound.

    Parameters
    ----------
    m : Tensor or ndarray of shape (d, d)
        A symmetric matrix (public or synthetic: this is analysis, not a private release).
    k : int
    epsilon, delta, sensitivity, noise_scale
        The budget (calibrated as in :func:`dplowrank.release_rank_k`) or a fixed σ.
    mechanism : {"gaussian", "complex"}
    noise_shape : {"isotropic", "upper_triangular"}
    trials : int
    failure_probability : float
        β for the high-probability bounds.
    generator : torch.Generator, optional
    progress_bar : bool
        Show progress on stderr.

    Returns
    -------
    BoundCheck
    """
    check_choice(mechanism, "mechanism", ("gaussian", "complex"))
    check_choice(noise_shape, "noise_shape", NOISE_SHAPES)
    mt = _known_matrix(m)
    mt = 0.5 * (mt + mt.T)
    d = mt.shape[0]
    k = check_k(k, d)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    cal = calibrate_noise(sensitivity, epsilon=epsilon, delta=delta, noise_scale=noise_scale)
    sigma = cal.noise_scale
    gen, _ = resolve_generator(generator, mt.device)
    shape = "hermitian" if mechanism == "complex" else noise_shape
    mech = (ComplexGaussianMechanism(sigma, sensitivity) if mechanism == "complex"
            else GaussianMechanism(sigma, sensitivity, noise_shape))
    real = mechanism == "gaussian"

    w, v = torch.linalg.eigh(mt)
    s = w.flip(0).numpy()
    vk = v[:, -k:]
    m_k = (vk * w[-k:]) @ vk.T
    best_captured = float(w[-k:].sum())
    tail = _tail_norm(s, k)
    b = noise_norm_bound(shape, d, sigma, failure_probability)
    theorem = primary_theorem(shape)
    if theorem == "mangoubi_vishnoi":
        expected_bound = mangoubi_vishnoi_bound(s, k, d, sigma)
    else:
        expected_bound = re_analyze_gauss_bound(s, k, sigma, noise_shape=shape)
    gaps = s[:k] - np.append(s[1:], 0.0)[:k]
    thr = gap_threshold(theorem, d, sigma, shape)
    met = bool(gaps[k - 1] >= thr) if theorem == "mangoubi_vishnoi" else bool(np.all(gaps >= thr))

    frob, spec, cap, norms = [], [], [], []
    keys = ["deterministic_spectral", "deterministic_frobenius", "high_prob_spectral", "high_prob_frobenius",
            "noise_norm", theorem]
    if real:
        keys += ["captured_variance", "high_prob_captured_variance"]
    held = dict.fromkeys(keys, 0)
    slack = 1e-9 * (1.0 + float(np.abs(s).max()))
    for _ in progress(range(trials), total=trials, desc="check_bounds", enabled=progress_bar):
        noisy = mech.perturb(mt, generator=gen)
        e_norm, f, sp, vecs = _draw_errors(mt, m_k, noisy, k)
        frob.append(f)
        spec.append(sp)
        norms.append(e_norm)
        loss = best_captured - float(torch.trace(vecs.T @ mt @ vecs)) if real else None
        if loss is not None:
            cap.append(loss)
        _tally(held, k, tail, b, expected_bound, theorem, slack, e_norm, f, sp, loss)
    bounds = _stated_bounds(k, tail, b, expected_bound, theorem, real)
    frob_a, spec_a = np.array(frob), np.array(spec)
    ratios = {
        "high_prob_spectral": float(spec_a.mean() / bounds["high_prob_spectral"]),
        "high_prob_frobenius": float(frob_a.mean() / bounds["high_prob_frobenius"]),
        theorem: float(frob_a.mean() / expected_bound),
    }
    cap_a = np.array(cap) if cap else None
    if cap_a is not None:
        ratios["high_prob_captured_variance"] = float(cap_a.mean() / bounds["high_prob_captured_variance"])
    return BoundCheck(
        mechanism=mechanism, noise_shape=shape, k=k, d=d, trials=trials, noise_scale=sigma,
        failure_probability=failure_probability, frobenius_errors=frob_a, spectral_errors=spec_a,
        captured_variance_loss=cap_a, noise_norms=np.array(norms),
        hold_rates={key: val / trials for key, val in held.items()}, bounds=bounds,
        conditions={theorem: met}, ratios=ratios,
    )


@dataclass(frozen=True)
class RepulsionResult:
    """Smallest top-k gaps under real (GOE) and complex (GUE) noise of equal σ.

    ``real_gaps``/``complex_gaps``: ndarray of shape (trials,), the smallest gap among the
    top-k eigenvalues of M + E, each divided by its own mean (unfolded), so the two
    distributions compare shape, not scale. ``small_gap_probability(s)`` is the fraction
    of draws whose unfolded smallest gap is below s: it falls like s^(β+1) with β = 1 (real)
    and β = 2 (complex).
    """

    k: int
    real_gaps: np.ndarray
    complex_gaps: np.ndarray

    def small_gap_probability(self, s: float = 0.25) -> tuple[float, float]:
        """(real, complex) fractions of unfolded smallest gaps below ``s``."""
        return float(np.mean(self.real_gaps < s)), float(np.mean(self.complex_gaps < s))


def gap_repulsion(
    m,
    k: int,
    *,
    noise_scale: float,
    trials: int = 500,
    generator: torch.Generator | None = None,
    progress_bar: bool = False,
) -> RepulsionResult:
    """The distribution of the smallest top-k gap of M + E for real vs complex noise.

    Level repulsion is what the complex mechanism relies on (Mangoubi & Vishnoi,
    arXiv:2306.16648): near-degenerate eigenvalues of M split under Hermitian noise with
    gap density ∝ s² (β = 2) instead of ∝ s (β = 1) for real symmetric noise, so tiny gaps,
    which make eigenvectors unstable, are rarer. Analysis tool (it takes the true M).
    """
    mt = _known_matrix(m)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    d = mt.shape[0]
    k = check_k(k, d)
    if k < 2:
        raise ValueError(f"gap_repulsion needs k >= 2 (a gap among the top k), got k={k}")
    gen, _ = resolve_generator(generator, mt.device)
    real_mech = GaussianMechanism(noise_scale, 1.0, "isotropic")
    cplx_mech = ComplexGaussianMechanism(noise_scale, 1.0)
    real_gaps, cplx_gaps = [], []
    for _ in progress(range(trials), total=trials, desc="gap_repulsion", enabled=progress_bar):
        for mech, out in ((real_mech, real_gaps), (cplx_mech, cplx_gaps)):
            lam = torch.linalg.eigvalsh(mech.perturb(mt, generator=gen)).flip(0)[:k]
            out.append(float((lam[:-1] - lam[1:]).min()))
    r, c = np.array(real_gaps), np.array(cplx_gaps)
    return RepulsionResult(k=k, real_gaps=r / r.mean(), complex_gaps=c / c.mean())


def _tally(held: dict, k, tail, b, expected_bound, theorem, slack, e_norm, f, sp, loss) -> None:
    """Count which bounds one draw met (``loss`` is ``None`` for the complex mechanism)."""
    cplx = loss is None
    held["deterministic_spectral"] += sp <= deterministic_spectral_bound(tail, e_norm, realified=cplx) + slack
    held["deterministic_frobenius"] += f <= deterministic_frobenius_bound(k, tail, e_norm, realified=cplx) + slack
    held["high_prob_spectral"] += sp <= deterministic_spectral_bound(tail, b, realified=cplx) + slack
    held["high_prob_frobenius"] += f <= deterministic_frobenius_bound(k, tail, b, realified=cplx) + slack
    held["noise_norm"] += e_norm <= b
    held[theorem] += bool(f <= expected_bound)
    if not cplx:
        held["captured_variance"] += loss <= analyze_gauss_captured_variance_bound(k, e_norm) + slack
        held["high_prob_captured_variance"] += loss <= analyze_gauss_captured_variance_bound(k, b) + slack


def _stated_bounds(k, tail, b, expected_bound, theorem, real) -> dict:
    """The bounds at the noise-norm bound B (the values the hold rates are judged against)."""
    bounds = {
        "noise_norm": b,
        "high_prob_spectral": deterministic_spectral_bound(tail, b, realified=not real),
        "high_prob_frobenius": deterministic_frobenius_bound(k, tail, b, realified=not real),
        theorem: expected_bound,
    }
    if real:
        bounds["high_prob_captured_variance"] = analyze_gauss_captured_variance_bound(k, b)
    return bounds
