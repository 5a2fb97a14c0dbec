"""The raw (non-private) statistics of activation Grams: one per group, and a model's set."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._coordinates import Coordinates
from ._targets import LayerGroup

__all__ = ["ActivationStatistics", "GroupStatistic"]



@dataclass(eq=False, repr=False)
class GroupStatistic:
    """The raw (non-private) clipped Gram of one group.

    Attributes
    ----------
    group : LayerGroup
    coordinates : Coordinates
    gram : Tensor of shape (ρ, ρ), float64
        K_z = Σ_e c_e Σ_t z_t z_tᵀ (c_e the per-example scale; c_e = 1 without clipping).
    n_examples : int
        Examples seen (non-private).
    n_clipped : int
        Examples scaled down (for ``clip=C``; every nonzero one for "normalize").
    clip : float or None
        C, or ``None`` for an unclipped (analysis-only, unreleasable) statistic.
    sensitivity : float or None
        Frobenius sensitivity of ``gram`` for the neighbour relation (``None`` without clipping).
    grid : float or None
        The grid step g of the exact sums (clipped statistics only; see the module docstring).
    max_examples : int or None
        How many examples the grid keeps exact (clipped statistics only); also the bound on
        the total of a sum over ranks (:func:`dplowrank.reduce_statistics`).
    """

    group: LayerGroup
    coordinates: Coordinates
    gram: torch.Tensor
    n_examples: int = 0
    n_clipped: int = 0
    clip: float | None = None
    sensitivity: float | None = None
    grid: float | None = None
    max_examples: int | None = None

    def row_space_gram(self) -> torch.Tensor:
        """K_u = D⁻¹ K_z D⁻¹ of shape (ρ, ρ) (non-private)."""
        return self.coordinates.to_row_space(self.gram)

    def __repr__(self) -> str:
        # the Gram and the counts are raw private statistics: a repr ends up in logs
        return f"GroupStatistic(group={self.group.name!r}, dim={self.group.dim}, clip={self.clip}, " \
               f"sensitivity={self.sensitivity})"


@dataclass(eq=False, repr=False)
class ActivationStatistics:
    """Per-group statistics from one pass over a corpus (non-private; see the module docstring).

    Attributes
    ----------
    groups : dict of str to GroupStatistic
    clip : float, "normalize" or None
    neighbour : str
    public : bool
        Declared by the caller of :func:`collect_statistics`: the corpus was public (or
        synthetic). A model factorised from statistics that are not public is *not private*
        (:attr:`dplowrank.compress.CompressionResult.privacy_status`).
    """

    groups: dict
    clip: object
    neighbour: str
    public: bool = False

    def __getitem__(self, name: str) -> GroupStatistic:
        return self.groups[name]

    def __iter__(self):
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return (f"ActivationStatistics({len(self.groups)} groups, clip={self.clip!r}, "
                f"neighbour={self.neighbour!r}, public={self.public})")
