"""Clipping and sensitivity: the one place a privacy unit's bound becomes a sensitivity.

Every private statistic of the library is a sum of per-unit contributions, each clipped to
a public bound before it is added: rows a with ‖a‖₂ ≤ C in the Gram accumulator
(contribution aaᵀ, ‖aaᵀ‖_F = ‖a‖² ≤ C²), per-example second moments S_e with ‖S_e‖_F ≤ C
in the compression statistics. :func:`clip_factors` computes the clipping of both, and
:func:`contribution_sensitivity` turns a bound B on one contribution's Frobenius norm into
the sum's sensitivity: B under add/remove (one contribution appears or disappears), √2·B
under replace for PSD contributions (‖P − Q‖²_F = ‖P‖² + ‖Q‖² − 2⟨P, Q⟩ ≤ 2B² as ⟨P, Q⟩ ≥ 0),
both rounded up.

Sensitivity of the unnormalised Gram matrix M = Σ aaᵀ of rows with ‖a‖₂ ≤ C.

Neighbouring datasets differ in one row (the privacy unit):

* ``"add_remove"``: M' = M ± aaᵀ, so ‖M − M'‖_F = ‖aaᵀ‖_F = ‖a‖² ≤ C², with equality
  at any row of norm C.
* ``"replace"``: M' = M − aaᵀ + bbᵀ, and ‖aaᵀ − bbᵀ‖²_F = ‖a‖⁴ + ‖b‖⁴ − 2(aᵀb)² ≤ 2C⁴,
  so ‖M − M'‖_F ≤ √2·C², with equality for orthogonal rows of norm C.

The same numbers bound the L2 norm of the change of vech(M) (the upper triangle with the
diagonal, as used by the Analyze Gauss shape), because ‖vech(X)‖₂ ≤ ‖X‖_F for symmetric
X; they are attained there too (a = C·e₁, and a = C·e₁, b = C·e₂). One number, the
Frobenius sensitivity, therefore serves every noise shape of the library.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .._validation import check_choice, check_positive

__all__ = ["NEIGHBOURS", "clip_factors", "contribution_sensitivity", "gram_sensitivity", "square_up", "times_sqrt2"]

NEIGHBOURS = ("add_remove", "replace")


def square_up(c: float) -> float:
    """The smallest float64 ≥ c² (c·c rounds to nearest, which can be one ulp below c²)."""
    s = c * c
    if Fraction(s) < Fraction(c) ** 2:
        s = math.nextafter(s, math.inf)
    return s


def times_sqrt2(x: float) -> float:
    """The smallest float64 ≥ √2·x (x ≥ 0): a replace-neighbour sensitivity is never rounded down."""
    s = math.sqrt(2.0) * x
    while Fraction(s) ** 2 < 2 * Fraction(x) ** 2:
        s = math.nextafter(s, math.inf)
    return s


def clip_factors(
    norms: torch.Tensor, limit: torch.Tensor | float, target: float, *, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit clipping factors: which units to scale, and by what.

    Parameters
    ----------
    norms : Tensor of shape (n,)
        Each unit's norm (or a quantity proportional to it, see ``limit``), ≥ 0, finite.
    limit : float or Tensor of shape (n,)
        A unit is clipped when ``norms > limit`` (the bound C in the units of ``norms``).
    target : float
        Clipped units get factor ``target / norms``: the norm they are scaled to, just
        below the bound. The caller's margin (target < C) covers the rounding *after* the
        clip, which the caller bounds and checks (the Gram's exact grid check, the
        compression statistics' rounding bound).
    normalize : bool
        Scale every nonzero unit to ``target`` (not only those above ``limit``).

    Returns
    -------
    (factors, clipped) : Tensor of shape (n,), bool Tensor of shape (n,)
        ``factors`` is 1 for units left as they are.
    """
    nonzero = norms > 0
    clipped = nonzero if normalize else norms > limit
    safe = torch.where(clipped, norms, torch.ones_like(norms))
    return torch.where(clipped, target / safe, torch.ones_like(norms)), clipped


def contribution_sensitivity(bound: float, neighbour: str = "add_remove") -> float:
    """Frobenius sensitivity of a sum of PSD contributions each of Frobenius norm ≤ ``bound``.

    ``bound`` under add/remove, √2·``bound`` (rounded up) under replace; see the module
    docstring. Both private statistics of the library are priced here.
    """
    b = check_positive(bound, "bound")
    check_choice(neighbour, "neighbour", NEIGHBOURS)
    return b if neighbour == "add_remove" else times_sqrt2(b)


def gram_sensitivity(row_norm: float, neighbour: str = "add_remove") -> float:
    """Frobenius sensitivity of Σ aaᵀ for rows clipped to L2 norm ``row_norm``.

    Parameters
    ----------
    row_norm : float
        The clipping norm C > 0 (public; never taken from the data).
    neighbour : {"add_remove", "replace"}
        The neighbour relation: C² for add/remove, √2·C² for replace-one.

    Returns
    -------
    float
    """
    c = check_positive(row_norm, "row_norm")
    check_choice(neighbour, "neighbour", NEIGHBOURS)
    # ‖aaᵀ‖_F = ‖a‖² ≤ C², rounded up, like √2·C²: the sensitivity is never below the exact one
    return contribution_sensitivity(square_up(c), neighbour)
