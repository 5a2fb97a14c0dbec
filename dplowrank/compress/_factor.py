"""Low-rank factorisations of linear layers and the allocation of ranks under a parameter budget.

Activation-aware (whitened) factorisation. For y = Wx with input Gram G = Σ xxᵀ, the rank-r
minimiser of ‖(W − Ŵ)X‖_F is Ŵ = U_r U_rᵀ W, U_r the top-r eigenvectors of W G Wᵀ
(equivalently the top-r left singular vectors of W L for any L with L Lᵀ = G). This is
SVD-LLM's truncation-aware whitening (Wang et al., arXiv:2403.07378) and uncentred AFM
(Yu & Wu 2023). G = I gives the data-free truncated SVD. With G known only through the row
space of W (K = QᵀGQ, W = W Q Qᵀ), W G Wᵀ = (WQ) K (WQ)ᵀ, so L = Q K^{1/2} suffices.

Joint rank-k for layers that read the same input (Peng et al., "Data-free weight compress and
denoise for large language models", arXiv:2402.16319): the stacked weight [W₁; …; W_m] is
factorised once, so the members share the right factor (one down-projection) and each keeps
its own rows of the left factor. With a Gram, the same stacked problem is the joint whitened
factorisation (it minimises Σᵢ ‖(Wᵢ − Ŵᵢ)X‖²_F with a shared right factor).
"""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._validation import check_choice

__all__ = ["left_basis", "whitened_factors", "allocate_ranks", "Unit", "ALLOCATIONS"]

ALLOCATIONS = ("uniform", "energy")


def left_basis(weight: torch.Tensor, *, gram: torch.Tensor | None = None,
               basis: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvectors of W G Wᵀ (G = Q K Qᵀ, or I) with their eigenvalues, descending.

    Parameters
    ----------
    weight : Tensor of shape (d_out, d_in)
    gram : Tensor of shape (ρ, ρ), optional
        K, symmetric PSD (negative eigenvalues are clipped to 0), in the coordinates of
        ``basis``; ``None`` for the data-free G = I.
    basis : Tensor of shape (d_in, ρ), optional
        Q with orthonormal columns spanning the row space of ``weight`` (``None``: Q = I).

    Returns
    -------
    vectors : Tensor of shape (d_out, m), float64
        m = min(d_out, ρ) orthonormal columns.
    energy : Tensor of shape (m,), float64
        Their eigenvalues (the output energy each direction captures).
    """
    a = weight.to(torch.float64)
    if gram is not None:
        if basis is not None:
            a = a @ basis.to(a)
        evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.T).to(a))
        a = a @ (evecs * evals.clamp(min=0.0).sqrt())  # W Q L with L Lᵀ = K
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    return u, s * s


def whitened_factors(weight: torch.Tensor, rank: int, *, gram: torch.Tensor | None = None,
                     basis: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (left (d_out, r), right (r, d_in)) of Ŵ = U_r U_rᵀ W (see :func:`left_basis`).

    Examples
    --------
    >>> w = torch.randn(6, 4, dtype=torch.float64)
    >>> left, right = whitened_factors(w, 4)
    >>> bool(torch.allclose(left @ right, w))
    True
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    u, _ = left_basis(weight, gram=gram, basis=basis)
    u = u[:, :rank]
    return u, u.T @ weight.to(torch.float64)


@dataclass(frozen=True)
class Unit:
    """One factorised matrix for rank allocation: a layer, or a jointly factorised group.

    Attributes
    ----------
    name : str
    in_features : int
    out_features : int
        Σ d_out for a joint group.
    energy : Tensor of shape (m,)
        Captured energy per direction, descending (from :func:`left_basis`).
    cost_bits : float, optional
        Bits stored per unit of rank when the factors are quantised (codes and scales).
    """

    name: str
    in_features: int
    out_features: int
    energy: torch.Tensor
    cost_bits: float | None = None

    @property
    def cost(self) -> float:
        """Storage per unit of rank in parameters: d_in + d_out, or, for quantised factors,
        ``cost_bits``/32 (32-bit parameter equivalents, so that a ratio r means r·32 bits per
        dense parameter)."""
        if self.cost_bits is not None:
            return self.cost_bits / 32.0
        return self.in_features + self.out_features

    @property
    def dense(self) -> int:
        return self.in_features * self.out_features

    @property
    def max_rank(self) -> int:
        """The largest rank that stores fewer parameters than the dense matrix (at least 1)."""
        return max(1, min(int(self.energy.shape[0]), int((self.dense - 1) // self.cost)))


def allocate_ranks(units: Sequence[Unit], ratio: float, *, strategy: str = "uniform") -> dict[str, int]:
    """Ranks whose factor parameters total at most ``ratio`` × the dense parameters.

    Parameters
    ----------
    units : sequence of Unit
    ratio : float
        Target Σ r(d_in + d_out) / Σ d_in·d_out, in (0, 1).
    strategy : {"uniform", "energy"}
        "uniform": every unit keeps the same fraction of its own parameters. "energy": greedy
        allocation across units of the rank with the largest captured *relative* energy per
        parameter (each unit's energy normalised by its total), which minimises the sum of
        relative output errors for the given spectra (exchange argument, as spectra are
        sorted).

    Returns
    -------
    dict of str to int
        At least 1 and at most ``unit.max_rank`` each.
    """
    check_choice(strategy, "strategy", ALLOCATIONS)
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise TypeError(f"ratio must be a number in (0, 1), got {ratio!r}")
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio!r}")
    if strategy == "uniform":
        return {u.name: max(1, min(u.max_rank, int(ratio * u.dense / u.cost))) for u in units}
    budget = ratio * sum(u.dense for u in units)
    ranks = {u.name: 1 for u in units}
    spent = sum(u.cost for u in units)
    norm = {u.name: u.energy.to(torch.float64) / max(float(u.energy.sum()), 1e-300) for u in units}
    heap = []
    for i, u in enumerate(units):
        if u.max_rank > 1:
            heapq.heappush(heap, (-float(norm[u.name][1]) / u.cost, i))
    while heap:
        _gain, i = heapq.heappop(heap)
        u = units[i]
        if spent + u.cost > budget:
            continue  # this unit no longer fits; a cheaper one still might
        r = ranks[u.name] + 1
        ranks[u.name] = r
        spent += u.cost
        if r < u.max_rank:
            heapq.heappush(heap, (-float(norm[u.name][r]) / u.cost, i))
    return ranks
