"""A statistical privacy auditor: an empirical lower bound on ε from many releases.

For neighbouring inputs D and D', draw n outputs of the mechanism on each, reduce every
output to a scalar statistic T, and for a rejection region S = {T > t} (or {T < t}) bound
p = P[M(D) ∈ S] from below and q = P[M(D') ∈ S] from above with Clopper–Pearson intervals.
Any (ε, δ)-DP mechanism satisfies p ≤ e^ε q + δ, so

    ε_lower = ln((p_low − δ) / q_high)

is a lower bound on the ε the mechanism can claim at δ, at the stated confidence (the
standard construction of Jagielski, Ullman & Oprea 2020, arXiv:2006.07709, and Nasr et al.
2021, arXiv:2101.04535). The region is chosen on one half of the samples and evaluated on
the other, so the choice does not bias the bound.

dplowrank's mechanisms claim μ-GDP, which implies (ε(δ'), δ') for *every* δ' via the exact
curve of Balle & Wang (2018). The auditor therefore tests the claim at several δ' where n
samples give tight intervals (δ' ≈ 1e-3 … 0.2 rather than 1e-6): a violation anywhere on the
curve refutes the claim. With 100,000 samples per side it detects noise √2 too small at
μ ≈ 1.

Multiple testing: every (δ', order of the neighbours) pair is a separate test with two
one-sided Clopper–Pearson bounds, so the auditor makes K = 2·len(deltas) tests and 2K bounds.
``confidence`` is *family-wise*: each bound is taken at level 1 − (1 − confidence)/(2K)
(Bonferroni), so a correct mechanism is flagged with probability at most 1 − confidence in
total, however many δ' are scanned. (The region is chosen on the other half of the
samples, so the threshold scan is not a further multiple comparison.)

The sample generator is generic (any callable), so the auditor also exercises planted bugs
and foreign mechanisms; :func:`block_diagonal_sampler` runs the shipped mechanisms on many
independent small problems at once (the diagonal blocks of one large noisy matrix are
independent draws of the small mechanism, since all noise entries are independent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from scipy.stats import beta as beta_dist

from ..privacy import gdp_epsilon

__all__ = ["AuditResult", "audit", "block_diagonal_sampler", "clopper_pearson"]


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a binomial proportion (exact, conservative)."""
    a = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(beta_dist.ppf(a / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta_dist.ppf(1 - a / 2, successes + 1, trials - successes))
    return lo, hi


@dataclass(frozen=True)
class AuditResult:
    """Outcome of :func:`audit`.

    Attributes
    ----------
    epsilon_lower : float
        The largest lower bound found, at ``delta`` (``-inf`` if none is positive).
    delta : float
        The δ' at which it was found.
    claimed_epsilon : float
        The mechanism's own claim at that δ'.
    flagged : bool
        ``epsilon_lower > claimed_epsilon`` at some audited δ': the claim is refuted at the
        stated confidence.
    per_delta : dict
        δ' → (ε_lower, claimed ε).
    samples : int
        Samples per neighbouring input.
    confidence : float
        Family-wise confidence over all ``tests``.
    tests : int
        Size of the family (audited δ' × both orders of the neighbours); each of a test's
        two Clopper–Pearson bounds is at level 1 − (1 − confidence)/(2·tests).
    """

    epsilon_lower: float
    delta: float
    claimed_epsilon: float
    flagged: bool
    per_delta: dict
    samples: int
    confidence: float
    tests: int = 1

    def __str__(self) -> str:
        verdict = "FLAGGED: claim refuted" if self.flagged else "consistent with the claim"
        return (f"audit ({self.samples} samples per side, {self.confidence:.0%} family-wise "
                f"confidence over {self.tests} tests): "
                f"epsilon >= {self.epsilon_lower:.4f} at delta={self.delta:g} vs claimed "
                f"{self.claimed_epsilon:.4f} -> {verdict}")


def _best_region(t_d: np.ndarray, t_dp: np.ndarray, delta: float) -> tuple[float, int]:
    """Threshold and direction maximising the empirical ln((p − δ)/q) on a selection half.

    Scans 400 quantiles of the pooled sample in both directions ({T > t} first, then
    {T < t}); the first maximum wins.
    """
    grid = np.quantile(np.concatenate([t_d, t_dp]), np.linspace(0.001, 0.999, 400))
    sd, sdp = np.sort(t_d), np.sort(t_dp)
    n, m = len(sd), len(sdp)
    p = np.concatenate([n - np.searchsorted(sd, grid, side="right"), np.searchsorted(sd, grid, side="left")]) / n
    q = np.concatenate([m - np.searchsorted(sdp, grid, side="right"), np.searchsorted(sdp, grid, side="left")]) / m
    q = np.maximum(q, 1.0 / m)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = np.where(p > delta, np.log(np.maximum(p - delta, 1e-300) / q), -np.inf)
    best = int(np.argmax(val))
    return float(grid[best % len(grid)]), (1 if best < len(grid) else -1)


def audit(
    sample: Callable[[str, int, torch.Generator], np.ndarray],
    *,
    claimed_mu: float | None = None,
    claimed: tuple[float, float] | None = None,
    samples: int = 100_000,
    deltas: Sequence[float] = (1e-3, 1e-2, 0.05, 0.1, 0.2),
    confidence: float = 0.95,
    generator: torch.Generator | None = None,
) -> AuditResult:
    """Audit a mechanism's privacy claim with ``samples`` releases on each of two neighbours.

    Parameters
    ----------
    sample : callable
        ``sample(which, n, generator)`` with ``which`` in {"D", "D'"} returns an ndarray of
        shape (≥ n,) of the scalar statistic of n independent outputs on that input.
    claimed_mu : float, optional
        The mechanism's GDP claim μ (its ε at each δ' is the exact GDP curve).
    claimed : (epsilon, delta), optional
        Or a plain (ε, δ) claim; then only δ' ≥ δ are audited, each against ε.
    samples : int
        Outputs per neighbour; half select the region, half evaluate it.
    deltas : sequence of float
        The δ' audited.
    confidence : float
        Family-wise confidence over all 2·len(deltas) tests (both orders of the
        neighbours at each δ'), by Bonferroni: a correct mechanism is flagged with
        probability at most 1 − confidence.
    generator : torch.Generator, optional

    Returns
    -------
    AuditResult
    """
    if (claimed_mu is None) == (claimed is None):
        raise ValueError("give exactly one of claimed_mu or claimed=(epsilon, delta)")
    if samples < 1000:
        raise ValueError(f"samples must be at least 1000 for a meaningful audit, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not deltas or any(not 0.0 < d < 1.0 for d in deltas):
        raise ValueError(f"deltas must be a non-empty sequence of values in (0, 1), got {deltas!r}")
    gen = generator
    if gen is None:
        # SeedSequence() draws its entropy, an int, from the OS; numpy's stub types the attribute for every form
        entropy = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(entropy % 2**63)
    t_d = np.asarray(sample("D", samples, gen), dtype=float)[:samples]
    t_dp = np.asarray(sample("D'", samples, gen), dtype=float)[:samples]
    if len(t_d) < samples or len(t_dp) < samples:
        raise ValueError(f"the sampler returned {len(t_d)} and {len(t_dp)} values, expected {samples} each")
    half = samples // 2
    sel_d, ev_d = t_d[:half], t_d[half:]
    sel_dp, ev_dp = t_dp[:half], t_dp[half:]
    if claimed is not None:
        eps_c, delta_c = claimed
        audit_deltas = [d for d in deltas if d >= delta_c] or [delta_c]
        claim_at = {d: float(eps_c) for d in audit_deltas}
    else:
        audit_deltas = list(deltas)
        mu_c = cast(float, claimed_mu)  # given: exactly one of claimed_mu and claimed (checked above)
        claim_at = {d: gdp_epsilon(mu_c, d) for d in audit_deltas}
    # Bonferroni over the family: K = 2·len(δ') tests (both orders), two one-sided bounds
    # each; a two-sided interval at level 1 − 2α has one-sided bounds at level 1 − α.
    tests = 2 * len(audit_deltas)
    alpha = (1.0 - confidence) / (2 * tests)
    per_delta = {}
    for delta in audit_deltas:
        results = []
        # both orders: the neighbour relation is symmetric
        for a_sel, b_sel, a_ev, b_ev in ((sel_d, sel_dp, ev_d, ev_dp), (sel_dp, sel_d, ev_dp, ev_d)):
            t, direction = _best_region(a_sel, b_sel, delta)
            if direction == 1:
                hits_a, hits_b = int((a_ev > t).sum()), int((b_ev > t).sum())
            else:
                hits_a, hits_b = int((a_ev < t).sum()), int((b_ev < t).sum())
            p_low = clopper_pearson(hits_a, len(a_ev), 1.0 - 2 * alpha)[0]
            q_high = clopper_pearson(hits_b, len(b_ev), 1.0 - 2 * alpha)[1]
            results.append(math.log((p_low - delta) / q_high) if p_low > delta else -math.inf)
        per_delta[delta] = (max(results), claim_at[delta])
    worst = max(per_delta, key=lambda d: per_delta[d][0] - per_delta[d][1])
    flagged = any(lo > c for lo, c in per_delta.values())
    return AuditResult(
        epsilon_lower=per_delta[worst][0], delta=worst, claimed_epsilon=per_delta[worst][1],
        flagged=flagged, per_delta=per_delta, samples=samples, confidence=confidence, tests=tests,
    )


def block_diagonal_sampler(
    perturb: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    m_d: torch.Tensor,
    m_dp: torch.Tensor,
    statistic: Callable[[torch.Tensor], torch.Tensor],
    *,
    blocks_per_call: int = 32,
) -> Callable[[str, int, torch.Generator], np.ndarray]:
    """A sampler for :func:`audit` that runs ``perturb`` on block-diagonal stacks.

    ``m_d`` and ``m_dp`` (shape (s, s)) are the two neighbouring Grams; each call of
    ``perturb`` sees ``blocks_per_call`` = B copies on the diagonal of one (s·B, s·B) matrix
    and yields B independent outputs (its diagonal blocks). ``statistic`` maps a stack of
    outputs, shape (B, s, s), to shape (B,). ``perturb`` may modify its argument (it gets a
    fresh copy each call), so in-place mechanisms can be audited too.

    A call draws (s·B)²/2 normals for B outputs and pays a fixed overhead, so the cost per
    output is about overhead/B + s²B/2 draws: B = 32 (a 64×64 matrix for s = 2) is
    near the minimum for the shipped mechanisms (a few µs per output on one core).
    """
    if isinstance(blocks_per_call, bool) or not isinstance(blocks_per_call, int) or blocks_per_call < 1:
        raise ValueError(f"blocks_per_call must be a positive integer, got {blocks_per_call!r}")
    s = m_d.shape[0]
    b = blocks_per_call

    def sample(which: str, n: int, gen: torch.Generator) -> np.ndarray:
        big = torch.block_diag(*([m_d if which == "D" else m_dp] * b))
        out = []
        for _ in range(-(-n // b)):
            noisy = perturb(big.clone(), gen)
            blocks = noisy.reshape(b, s, b, s).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # (B, s, s)
            out.append(statistic(blocks).cpu().numpy())
        return np.concatenate(out)[:n]

    return sample
