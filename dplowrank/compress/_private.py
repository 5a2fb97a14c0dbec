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
eigenpairs whose eigenvalue clears the edge (plus its finite-d margin e·d^(−2/3), see
:mod:`dplowrank.diagnostics._spike`) are spikes of the spiked Wigner model
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

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .._random import resolve_noise_source
from .._validation import check_choice
from ..accounting import PrivacyAccountant, PrivacyBudget, calibrate_plan
from ..diagnostics import noise_edge, spike_estimate
from ..gram import check_gram, check_range
from ..mechanisms import NOISE_SHAPES, gaussian_vector_noise
from ..privacy import ComposedEvent, GaussianEvent
from ..release import LowRankRelease, release_rank_k
from ._importance import ImportanceStatistics, importance_matrix
from ._stats import ActivationStatistics

__all__ = ["PrivateStatistics", "PrivateImportance", "release_statistics", "denoise_gram", "denoise_importance", "ESTIMATORS"]

ESTIMATORS = ("spike", "ridge", "raw")


@dataclass(frozen=True, eq=False)
class PrivateStatistics:
    """The private releases of a model's activation statistics: safe to publish.

    Attributes
    ----------
    releases : dict of str to LowRankRelease
        One full-spectrum release per group (k = ρ); empty when only importance was released.
    coordinates : dict of str to Coordinates
        Public coordinates of each release (row-space basis, preconditioner).
    groups : dict of str to LayerGroup
    epsilon, delta : float
        The total budget the plan was calibrated for.
    importance : PrivateImportance or None
        The released first-order importance scores, when they were part of the plan.
    """

    releases: dict
    coordinates: dict
    groups: dict
    epsilon: float
    delta: float
    importance: PrivateImportance | None = None

    def _all(self) -> list:
        return list(self.releases.values()) + ([self.importance] if self.importance is not None else [])

    @property
    def accountant(self) -> PrivacyAccountant:
        """A :class:`PrivacyAccountant` holding every release of the model (Grams and importance)."""
        return PrivacyAccountant(self._all())

    @property
    def randomness(self) -> str:
        """"secure" when every release's noise was keyed from the OS, else "seeded"."""
        return "secure" if all(r.for_publication for r in self._all()) else "seeded"

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
    statistics: ActivationStatistics | None = None,
    *,
    epsilon: float,
    delta: float,
    importance: ImportanceStatistics | None = None,
    weights: Mapping[str, float] | None = None,
    noise_shape: str = "isotropic",
    generator: torch.Generator | None = None,
    budget: PrivacyBudget | None = None,
) -> PrivateStatistics:
    """Release every group's Gram (and the importance scores) so that the whole model is (ε, δ)-DP.

    One example is one privacy unit. All releases form one plan: Gaussian releases compose
    exactly in GDP, so the Grams and the importance share one total (ε, δ).

    Parameters
    ----------
    statistics : ActivationStatistics, optional
        Clipped statistics from :func:`collect_statistics` (``clip`` not ``None``).
    epsilon, delta : float
        Total budget for all releases together.
    importance : ImportanceStatistics, optional
        Clipped first-order importance from :func:`collect_importance`, released with the
        Gaussian mechanism (:func:`dplowrank.mechanisms.gaussian_vector_noise`) as one more
        release of the plan (its share's name is ``"importance"`` in ``weights``).
    weights : mapping of str to float, optional
        Relative budget shares by group name (and ``"importance"``) (μ² ∝ weight; default equal).
    noise_shape : {"isotropic", "upper_triangular"}, default "isotropic"
    generator : torch.Generator, optional
        Seeded source of all noise (on the statistics' device; reproducible, the releases are
        then marked not for publication). Default: the secure source (AES-256-CTR keyed from
        ``os.urandom``), as in :func:`dplowrank.release_rank_k`.
    budget : PrivacyBudget, optional
        Charged once with the whole plan (one composed event of every release),
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
    if statistics is None and importance is None:
        raise ValueError("give statistics, importance or both: there is nothing to release")
    if statistics is not None and not isinstance(statistics, ActivationStatistics):
        raise TypeError(f"statistics must be ActivationStatistics, got {type(statistics).__name__}")
    if importance is not None and not isinstance(importance, ImportanceStatistics):
        raise TypeError(f"importance must be ImportanceStatistics, got {type(importance).__name__}")
    stats = list(statistics) if statistics is not None else []
    for st in stats:
        if st.sensitivity is None:
            raise ValueError(
                f"group {st.group.name!r} was collected without clipping (clip=None); such a statistic has "
                "no bounded sensitivity and cannot be released"
            )
    if importance is not None and importance.sensitivity is None:
        raise ValueError("the importance was collected without clipping (clip=None) and cannot be released")
    relations = {x.neighbour for x in (statistics, importance) if x is not None}
    if len(relations) > 1:
        raise ValueError(f"statistics and importance were collected for different neighbour relations {sorted(relations)}")
    (neighbour,) = relations
    names = [st.group.name for st in stats] + (["importance"] if importance is not None else [])
    sens = [st.sensitivity for st in stats] + ([importance.sensitivity] if importance is not None else [])
    if importance is not None and "importance" in names[:-1]:
        raise ValueError("a group is named 'importance', the name of the importance's share: rename the group")
    if weights is None:
        w = [1.0] * len(names)
    else:
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"weights name unknown groups {sorted(unknown)}; releases are {names}")
        w = [float(weights.get(n, 1.0)) for n in names]
    plan = calibrate_plan(epsilon, delta, weights=w, sensitivities=sens)
    # Everything release_rank_k would refuse is refused now, before the plan is charged: the
    # arguments, and each Gram's checks (finite, symmetric, in range with its noise: one-bit
    # side channels, as in release_rank_k; see docs/threat_model.md).
    check_choice(noise_shape, "noise_shape", NOISE_SHAPES)
    if budget is not None and not isinstance(budget, PrivacyBudget):
        raise TypeError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
    for st, cal in zip(stats, plan):
        resolve_noise_source(generator, st.gram.device)  # type and device of the generator
        check_range(check_gram(st.gram), cal.noise_scale, st.group.dim, torch.float64)
    if importance is not None:
        for score in importance.scores.values():
            resolve_noise_source(generator, score.device)
    if budget is not None:
        # the whole plan is charged once, atomically, before the first noise is drawn: a
        # refusal charges nothing, and no other thread or process can spend in between
        budget.spend(ComposedEvent(tuple(GaussianEvent(c.noise_multiplier, neighbour) for c in plan)))
    releases = {}
    for st, cal in zip(stats, plan):
        releases[st.group.name] = release_rank_k(
            st.gram, st.group.dim, sensitivity=st.sensitivity, noise_scale=cal.noise_scale, delta=delta,
            neighbour=neighbour, noise_shape=noise_shape, generator=generator,
            dtype=torch.float64, solver="dense",
        )
    released = None if importance is None else _release_importance(importance, plan[-1], generator)
    return PrivateStatistics(
        releases, {st.group.name: st.coordinates for st in stats}, {st.group.name: st.group for st in stats},
        float(epsilon), float(delta), released,
    )


@dataclass(frozen=True, eq=False)
class PrivateImportance:
    """Released first-order importance scores: safe to publish.

    Attributes
    ----------
    scores : dict of str to Tensor of shape (d_out, d_in), float64
        I + N(0, σ²) entrywise, by layer name (entries may be negative: noise).
    noise_scale : float
        σ.
    sensitivity : float
        Δ, the L2 sensitivity of all scores together.
    neighbour : str
    randomness : {"secure", "seeded"}
    granularity : {"entry", "marginal"}
        As collected (:func:`collect_importance`).
    shapes : dict of str to (int, int)
        Each layer's weight shape.
    """

    scores: dict
    noise_scale: float
    sensitivity: float
    neighbour: str
    randomness: str
    granularity: str = "entry"
    shapes: dict | None = None

    @property
    def privacy_event(self) -> GaussianEvent:
        return GaussianEvent(self.noise_scale / self.sensitivity, self.neighbour)

    @property
    def for_publication(self) -> bool:
        return self.randomness == "secure"

    def denoised(self, *, prior: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Each layer's denoised importance as a (d_out, d_in) matrix (post-processing, free).

        :func:`denoise_importance` of the scores (for ``"marginal"``, of the row sums and of
        the column sums separately, then their separable product). ``prior``: public
        importance by layer, in the scores' own layout.
        """
        out = {}
        shapes = self.shapes or {}
        for n, s in self.scores.items():
            p = None if prior is None else prior.get(n)
            if self.granularity == "entry":
                out[n] = denoise_importance(s, self.noise_scale, prior=p)
                continue
            if n not in shapes:
                raise ValueError(f"marginal scores of layer {n!r} come without the layer's shape")
            d_out = shapes[n][0]
            parts = [denoise_importance(s[sl], self.noise_scale, prior=None if p is None else p[sl])
                     for sl in (slice(0, d_out), slice(d_out, None))]
            out[n] = importance_matrix(torch.cat(parts), "marginal", shapes[n])
        return out


def _release_importance(importance: ImportanceStatistics, cal, generator) -> PrivateImportance:
    """Gaussian noise of scale σ on every score (the L2 sensitivity covers all layers together)."""
    label = None
    noisy = {}
    for name, score in importance.scores.items():
        source, _, label = resolve_noise_source(generator, score.device)
        noisy[name] = gaussian_vector_noise(score, cal.noise_scale, source=source)
    if label is None or importance.sensitivity is None or cal.noise_scale is None:
        raise ValueError("importance needs clipped scores (a sensitivity) and at least one layer to be released")
    return PrivateImportance(noisy, float(cal.noise_scale), float(importance.sensitivity), importance.neighbour, label,
                             importance.granularity, importance.shapes)


def denoise_importance(noisy: torch.Tensor, noise_scale: float, *,
                       prior: torch.Tensor | None = None) -> torch.Tensor:
    """Estimate non-negative importance scores from their noisy release (post-processing, free).

    Positive-part James–Stein shrinkage towards a prior (James & Stein 1961; Efron & Morris
    1973): with P scores, noise N(0, σ²I) and a prior direction π (default: constant, the
    data-free choice under which the weighted factorisation is the plain SVD), the target T is
    π scaled to the noisy scores by least squares, and

        Î = T + max(0, 1 − N / ‖Ĩ − T‖²)·(Ĩ − T),   N = (q + 4√(2q))·σ², q = P − 1,

    clamped at 0. N is the noise's energy in Ĩ − T plus four standard deviations of its χ²
    (a little more shrinkage than James–Stein's (P − 3)σ², so that pure noise is mistaken for
    signal with probability about 1e-4). When the release carries no signal beyond its noise
    (‖Ĩ − T‖² ≤ N) the estimate is exactly the prior, so the factorisation falls back to the data-free (or
    public-prior) one; as σ → 0 it tends to the scores themselves.

    Parameters
    ----------
    noisy : Tensor of any shape (a layer's scores)
    noise_scale : float
        σ of the release.
    prior : Tensor of the same shape, optional
        Public, non-negative prior importance (e.g. from public text); default constant.

    Returns
    -------
    Tensor of the shape of ``noisy``, float64, ≥ 0
    """
    x = noisy.to(torch.float64)
    p = x.numel()
    pi = torch.ones_like(x) if prior is None else prior.to(x).clamp(min=0.0)
    scale = float((pi * x).sum()) / max(float((pi * pi).sum()), 1e-300)
    target = pi * max(scale, 0.0)
    resid = x - target
    energy = float((resid * resid).sum())
    # the noise's share of ‖Ĩ − T‖²: (P − 1)σ² on average, plus 4 standard deviations of the
    # χ² (√(2(P − 1))σ² each), so that pure noise is taken for signal with probability ~1e-4
    q = max(p - 1, 1)
    noise_energy = (q + 4.0 * math.sqrt(2.0 * q)) * float(noise_scale) ** 2
    shrink = max(0.0, 1.0 - noise_energy / energy) if energy > 0 else 0.0
    out = (target + shrink * resid).clamp_(min=0.0)
    if float(out.max()) <= 0.0:
        out = torch.ones_like(x)  # nothing positive left: constant importance (the plain SVD)
    return out


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
    est = spike_estimate(lam, edge, d)  # the shared spiked-Wigner reading (diagnostics._spike)
    keep = est.is_spike
    v = vec[:, keep]  # shape: (d, m)
    m = est.rank
    rest = float(torch.sum(lam)) - float(est.theta.sum())
    level = max(rest / (d - m), 0.0) if m < d else 0.0
    if m == 0 and level <= 0.0:
        level = 1.0  # pure noise with a non-positive trace: the prior's scale is arbitrary
    out = (v * est.shrunk[keep]) @ v.T
    if m < d:
        out = out + level * (torch.eye(d, dtype=lam.dtype, device=lam.device) - v @ v.T)
    return 0.5 * (out + out.T)
