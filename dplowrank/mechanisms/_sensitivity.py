"""Sensitivity of the unnormalised Gram matrix M = Σ aaᵀ of rows with ‖a‖₂ ≤ C.

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

from .._validation import check_choice, check_positive

__all__ = ["NEIGHBOURS", "gram_sensitivity", "times_sqrt2", "square_up"]

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
    c2 = square_up(c)  # rounded up, like √2·C²: the sensitivity is never below the exact one
    return c2 if neighbour == "add_remove" else times_sqrt2(c2)
