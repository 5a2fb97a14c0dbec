"""Private release of activation statistics and noise-aware estimation of the Gram.

Release
-------
Each group's clipped Gram K_z (dimension ρ = min(d_in, Σ d_out)) goes through the core
Gaussian mechanism (:func:`dplowrank.release_rank_k` with k = ρ: the whole noisy spectrum).
A total (ε, δ) is split over the groups with :func:`dplowrank.calibrate_plan`; Gaussian
releases compose exactly in GDP (μ² adds), so the model's cost is exactly the GDP sum of the
per-group releases (:attr:`PrivateStatistics.accountant`).

Estimation (post-processing, free)
----------------------------------
The noisy matrix is K̃ = K + E with E isotropic (GOE-shaped) of scale σ, whose spectrum fills
[−e, e], e = √(2ρ)·σ (:func:`dplowrank.noise_edge`). The factorisation maximises tr(Πᵀ T Π),
which is *linear* in K, so the best projection uses the best estimate of K — not K̃. Released
eigenpairs whose eigenvalue clears the edge are spikes of the spiked Wigner model
(Benaych-Georges & Nadakuditi, arXiv:0910.2120; Capitaine, Donati-Martin & Féral 2009): a true
eigenvalue θ > e/2 appears at λ̃ = θ + e²/(4θ) and its eigenvector has squared overlap
1 − e²/(4θ²) with the truth, while eigenvectors inside the bulk carry (asymptotically) no
information. ``method="spike"`` (default) therefore keeps the spikes with the Frobenius-optimal
eigenvalue θ·(1 − e²/4θ²), and replaces everything else by the data-free prior: the identity
in the statistic's coordinates, scaled so that the trace matches tr K̃ (an unbiased estimate of
tr K). When no eigenvalue clears the edge the estimate is exactly the prior, so the
factorisation is exactly the data-free one (SVD, or the public-prior whitening); as the noise
vanishes every eigenvalue is a spike and the estimate tends to K (the non-private result).
``method="ridge"`` adds e·I to K̃ (the smallest shift that makes E + eI ⪰ 0 w.h.p.);
``method="raw"`` uses K̃ as is (the naive recipe, for comparison).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .._random import resolve_noise_source
from .._validation import check_choice
from ..accounting import PrivacyAccountant, PrivacyBudget, calibrate_plan
from ..privacy import ComposedEvent, GaussianEvent
from ..diagnostics import noise_edge
from ..mechanisms import NOISE_SHAPES
from ..gram import check_gram, check_range
from ..release import LowRankRelease, release_rank_k
from ._stats import ActivationStatistics

__all__ = ["PrivateStatistics", "release_statistics", "denoise_gram", "ESTIMATORS"]

ESTIMATORS = ("spike", "ridge", "raw")


@dataclass(frozen=True, eq=False)
class PrivateStatistics:
    """The private releases of a model's activation statistics: safe to publish.

    Attributes
    ----------
    releases : dict of str to LowRankRelease
        One full-spectrum release per group (k = ρ).
    coordinates : dict of str to Coordinates
        Public coordinates of each release (row-space basis, preconditioner).
    groups : dict of str to LayerGroup
    epsilon, delta : float
        The total budget the plan was calibrated for.
    """

    releases: dict
    coordinates: dict
    groups: dict
    epsilon: float
    delta: float

    @property
    def accountant(self) -> PrivacyAccountant:
        """A :class:`PrivacyAccountant` holding every release of the model."""
        return PrivacyAccountant(self.releases.values())

    @property
    def randomness(self) -> str:
        """"secure" when every release's noise was keyed from the OS, else "seeded"."""
        return "secure" if all(r.for_publication for r in self.releases.values()) else "seeded"

    @property
    def for_publication(self) -> bool:
        return self.randomness == "secure"

    def spent_epsilon(self, delta: float | None = None) -> float:
        """ε of the whole model at ``delta`` (default: the plan's δ), exact GDP composition."""
        return self.accountant.epsilon(self.delta if delta is None else delta)

    def row_space_gram(self, name: str, *, method: str = "spike") -> torch.Tensor:
        """Noise-aware estimate of group ``name``'s row-space Gram K_u, shape (ρ, ρ) (free)."""
        return self.coordinates[name].to_row_space(denoise_gram(self.releases[name], method=method))


def release_statistics(
    statistics: ActivationStatistics,
    *,
    epsilon: float,
    delta: float,
    weights: Mapping[str, float] | None = None,
    noise_shape: str = "isotropic",
    generator: torch.Generator | None = None,
    budget: PrivacyBudget | None = None,
) -> PrivateStatistics:
    """Release every group's Gram so that the whole model is (ε, δ)-DP (one example = one unit).

    Parameters
    ----------
    statistics : ActivationStatistics
        Clipped statistics from :func:`collect_statistics` (``clip`` not ``None``).
    epsilon, delta : float
        Total budget for all groups together.
    weights : mapping of str to float, optional
        Relative budget shares by group name (μ² ∝ weight; default equal).
    noise_shape : {"isotropic", "upper_triangular"}, default "isotropic"
    generator : torch.Generator, optional
        Seeded source of all noise (on the statistics' device; reproducible, the releases are
        then marked not for publication). Default: the secure source (AES-256-CTR keyed from
        ``os.urandom``), as in :func:`dplowrank.release_rank_k`.
    budget : PrivacyBudget, optional
        Charged once with the whole plan (one composed event of every group's release),
        atomically, before any noise is drawn.

    Returns
    -------
    PrivateStatistics

    Raises
    ------
    ValueError
        For unclipped statistics or bad weights, before any noise is drawn.
    BudgetExceededError
        When ``budget`` cannot afford the plan (nothing is charged).
    """
    if not isinstance(statistics, ActivationStatistics):
        raise TypeError(f"statistics must be ActivationStatistics, got {type(statistics).__name__}")
    stats = list(statistics)
    for st in stats:
        if st.sensitivity is None:
            raise ValueError(
                f"group {st.group.name!r} was collected without clipping (clip=None); such a statistic has "
                "no bounded sensitivity and cannot be released"
            )
    names = [st.group.name for st in stats]
    if weights is None:
        w = [1.0] * len(stats)
    else:
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"weights name unknown groups {sorted(unknown)}; groups are {names}")
        w = [float(weights.get(n, 1.0)) for n in names]
    plan = calibrate_plan(epsilon, delta, weights=w, sensitivities=[st.sensitivity for st in stats])
    # Everything release_rank_k would refuse is refused now, before the plan is charged: the
    # arguments, and each Gram's checks (finite, symmetric, in range with its noise: one-bit
    # side channels, as in release_rank_k; see docs/threat_model.md).
    check_choice(noise_shape, "noise_shape", NOISE_SHAPES)
    if budget is not None and not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    for st, cal in zip(stats, plan):
        resolve_noise_source(generator, st.gram.device)  # type and device of the generator
        check_range(check_gram(st.gram), cal.noise_scale, st.group.dim, torch.float64)
    if budget is not None:
        # the whole plan is charged once, atomically, before the first noise is drawn: a
        # refusal charges nothing, and no other thread or process can spend in between
        budget.spend(ComposedEvent(tuple(GaussianEvent(c.noise_multiplier, statistics.neighbour) for c in plan)))
    releases = {}
    for st, cal in zip(stats, plan):
        releases[st.group.name] = release_rank_k(
            st.gram, st.group.dim, sensitivity=st.sensitivity, noise_scale=cal.noise_scale, delta=delta,
            neighbour=statistics.neighbour, noise_shape=noise_shape, generator=generator,
            dtype=torch.float64, solver="dense",
        )
    return PrivateStatistics(
        releases, {st.group.name: st.coordinates for st in stats}, {st.group.name: st.group for st in stats},
        float(epsilon), float(delta),
    )


def denoise_gram(release: LowRankRelease, *, method: str = "spike") -> torch.Tensor:
    """Estimate the released Gram from its noisy full spectrum (post-processing, free).

    Parameters
    ----------
    release : LowRankRelease
        A release with k = d (the whole spectrum), as made by :func:`release_statistics`.
    method : {"spike", "ridge", "raw"}, default "spike"
        See the module docstring.

    Returns
    -------
    Tensor of shape (d, d), float64
        Symmetric positive semi-definite for "spike" and "ridge".
    """
    check_choice(method, "method", ESTIMATORS)
    if release.k != release.dim:
        raise ValueError(f"denoising needs the whole spectrum (k = d = {release.dim}), the release has k={release.k}")
    lam = release.eigenvalues.to(torch.float64)
    vec = release.eigenvectors.to(torch.float64)
    d = release.dim
    if method == "raw":
        return (vec * lam) @ vec.T
    shape = "hermitian" if release.mechanism == "complex" else release.noise_shape
    edge = noise_edge(shape, d, release.noise_scale)
    if method == "ridge":
        return (vec * (lam + edge).clamp(min=0.0)) @ vec.T
    return _spike_estimate(lam, vec, edge)


def _spike_estimate(lam: torch.Tensor, vec: torch.Tensor, edge: float) -> torch.Tensor:
    """Spikes above ``edge`` with shrunk eigenvalues, the trace-matched identity elsewhere."""
    d = lam.shape[0]
    keep = lam > edge
    l = lam[keep]
    v = vec[:, keep]  # shape: (d, m)
    # Invert λ̃ = θ + e²/(4θ) on the outlier branch θ > e/2 (arXiv:0910.2120, Thm 2.1 for Wigner noise).
    theta = 0.5 * (l + torch.sqrt((l * l - edge * edge).clamp(min=0.0)))
    overlap2 = 1.0 - (edge * edge) / (4.0 * theta * theta)
    spikes = theta * overlap2  # Frobenius-optimal eigenvalue for a vector with that overlap
    m = int(keep.sum())
    rest = float(torch.sum(lam)) - float(theta.sum())
    level = max(rest / (d - m), 0.0) if m < d else 0.0
    if m == 0 and level <= 0.0:
        level = 1.0  # pure noise with a non-positive trace: the prior's scale is arbitrary
    out = (v * spikes) @ v.T
    if m < d:
        out = out + level * (torch.eye(d, dtype=lam.dtype, device=lam.device) - v @ v.T)
    return 0.5 * (out + out.T)
