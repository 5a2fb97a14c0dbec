"""Validation of user input, in one place. Every error names the offending value."""

from __future__ import annotations

import math
import numbers

__all__ = [
    "check_epsilon",
    "check_delta",
    "check_positive",
    "check_k",
    "check_choice",
    "check_dense_input",
]


def _as_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    return float(value)


def check_epsilon(epsilon: object, name: str = "epsilon") -> float:
    """Return ``epsilon`` as a float after checking 0 < ε < ∞."""
    eps = _as_real(name, epsilon)
    if not (eps > 0.0) or math.isinf(eps) or math.isnan(eps):
        raise ValueError(f"{name} must be finite and > 0, got {epsilon!r}")
    return eps


def check_delta(delta: object, name: str = "delta") -> float:
    """Return ``delta`` as a float after checking 0 < δ < 1."""
    d = _as_real(name, delta)
    if not (0.0 < d < 1.0):
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {delta!r}")
    return d


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or ≥ 0 with ``allow_zero``)."""
    v = _as_real(name, value)
    ok = (v >= 0.0) if allow_zero else (v > 0.0)
    if not ok or math.isinf(v) or math.isnan(v):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_k(k: object, d: int) -> int:
    """Return ``k`` after checking it is an integer in [1, d]."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {k!r} of type {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= d:
        raise ValueError(f"k must lie in [1, d] = [1, {d}], got k={k}")
    return k


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    # Only a str can be a choice: testing ``in`` with an array or tensor would compare
    # elementwise (and raise an unrelated error) instead of refusing it.
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def check_dense_input(x: object, name: str) -> None:
    """Refuse tensors whose values cannot be read: a sparse layout or the ``meta`` device.

    Anything else passes through (conversion to a tensor, and its own errors, come later).
    Raises ``TypeError`` for a sparse (COO, CSR, ...) tensor and ``ValueError`` for a tensor on
    the meta device, each naming the argument and what it got.
    """
    import torch  # local: this module is otherwise pure Python

    if not isinstance(x, torch.Tensor):
        return
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}; call .to_dense() first")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a tensor on the 'meta' device, which holds no values (shape {tuple(x.shape)})")
