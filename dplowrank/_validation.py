"""Validation of user input, in one place. Every error names the offending value.

A validator's bad values sit next to it; the sweep draws from them. Each ``check_*`` function
here has a module-level table of ``(bad value, exception it raises)`` pairs right after it
(:data:`BAD_EPSILON`, :data:`BAD_DELTA`, :data:`BAD_POSITIVE`, :data:`BAD_K`,
:data:`BAD_CHOICE`, :data:`BAD_DENSE_INPUT`, :data:`BAD_INT`, :data:`BAD_TOLERANCE`), and :data:`BAD_VALUES` maps each validator to
its table. ``tests/test_sweep.py`` checks that every validator refuses every value of its own
table with that exception and a message naming the parameter, and its bad-input sweep over
the public entry points draws the spoiled value of each parameter that one of these
validators checks from the validator's table. A value a validator newly refuses goes into its
table, and every entry point that uses the validator is then swept with it.

Two tables depend on more than the validator: :func:`bad_k` adds to :data:`BAD_K` the values
just above ``d``, and :data:`BAD_NONNEGATIVE` is :data:`BAD_POSITIVE` without the zeros (for
``check_positive(..., allow_zero=True)``). :data:`BAD_DENSE_INPUT` holds tensors, so it (and
:data:`BAD_VALUES`, which includes it) is built on first access: importing this module does not
import torch.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from decimal import Decimal

__all__ = [
    "check_epsilon",
    "check_delta",
    "check_positive",
    "check_k",
    "check_choice",
    "check_dense_input",
    "check_int",
    "check_tolerance",
    "BAD_EPSILON",
    "BAD_DELTA",
    "BAD_POSITIVE",
    "BAD_NONNEGATIVE",
    "BAD_K",
    "bad_k",
    "BAD_CHOICE",
    "BAD_DENSE_INPUT",
    "BAD_INT",
    "BAD_TOLERANCE",
    "BAD_VALUES",
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


#: Values :func:`check_epsilon` refuses, with the exception it raises.
BAD_EPSILON = (
    (0.0, ValueError), (0, ValueError), (-1.0, ValueError), (-1e-300, ValueError),
    (math.inf, ValueError), (-math.inf, ValueError), (math.nan, ValueError),
    ("1", TypeError), (b"1", TypeError), (True, TypeError), (None, TypeError), (1j, TypeError),
    (Decimal("1"), TypeError), ([1.0], TypeError),
)


def check_delta(delta: object, name: str = "delta") -> float:
    """Return ``delta`` as a float after checking 0 < δ < 1."""
    d = _as_real(name, delta)
    if not (0.0 < d < 1.0):
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {delta!r}")
    return d


#: Values :func:`check_delta` refuses, with the exception it raises.
BAD_DELTA = (
    (0.0, ValueError), (0, ValueError), (-1e-300, ValueError), (-0.1, ValueError), (1.0, ValueError),
    (1, ValueError), (1.5, ValueError), (math.inf, ValueError), (math.nan, ValueError),
    ("0.1", TypeError), (True, TypeError), (None, TypeError), (1j, TypeError), (Decimal("0.1"), TypeError),
    ([0.1], TypeError),
)


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a finite float > 0 (or ≥ 0 with ``allow_zero``)."""
    v = _as_real(name, value)
    ok = (v >= 0.0) if allow_zero else (v > 0.0)
    if not ok or math.isinf(v) or math.isnan(v):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


#: Values :func:`check_positive` refuses (``allow_zero=False``), with the exception it raises.
BAD_POSITIVE = (
    (0, ValueError), (0.0, ValueError), (-0.0, ValueError), (-1, ValueError), (-1e-300, ValueError),
    (math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError),
    ("1", TypeError), (b"x", TypeError), (True, TypeError), (None, TypeError), (1j, TypeError),
    (Decimal("1"), TypeError), ([1.0], TypeError),
)
#: Values ``check_positive(..., allow_zero=True)`` refuses: :data:`BAD_POSITIVE` without the zeros.
BAD_NONNEGATIVE = tuple(
    (v, e) for v, e in BAD_POSITIVE if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)
)


def check_k(k: object, d: int) -> int:
    """Return ``k`` after checking it is an integer in [1, d]."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {k!r} of type {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= d:
        raise ValueError(f"k must lie in [1, d] = [1, {d}], got k={k}")
    return k


#: Values :func:`check_k` refuses whatever ``d`` is, with the exception it raises
#: (:func:`bad_k` adds those just above ``d``).
BAD_K = (
    (0, ValueError), (-1, ValueError), (1.0, TypeError), (1.5, TypeError), ("1", TypeError),
    (None, TypeError), (True, TypeError), (1j, TypeError), (Decimal("1"), TypeError), ([1], TypeError),
)


def bad_k(d: int) -> tuple:
    """The values ``check_k(·, d)`` refuses: :data:`BAD_K` and the integers just above ``d``."""
    return BAD_K + ((d + 1, ValueError), (d + 5, ValueError))


def check_int(value: object, name: str, *, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int after checking it is an integer (``operator.index``; bools
    refused) in ``[low, high]`` (``high=None``: no upper bound)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if v < low or (high is not None and v > high):
        rng = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {rng}, got {name}={v}")
    return v


#: Values ``check_int(·, name, low=1)`` refuses, with the exception it raises.
BAD_INT = (
    (0, ValueError), (-3, ValueError), (1.0, TypeError), (2.5, TypeError), ("2", TypeError),
    (None, TypeError), (True, TypeError), (Decimal("2"), TypeError), ([2], TypeError),
)


def check_tolerance(value: object, name: str) -> float | None:
    """Return ``None`` or ``value`` as a finite float > 0 (a solver tolerance: an int or a float)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or None, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a finite positive number, got {name}={value!r}")
    return v


#: Values :func:`check_tolerance` refuses, with the exception it raises.
BAD_TOLERANCE = (
    (0.0, ValueError), (-1e-6, ValueError), (math.inf, ValueError), (math.nan, ValueError),
    ("1e-6", TypeError), (True, TypeError), (1j, TypeError), ([1e-6], TypeError),
)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    # Only a str can be a choice: testing ``in`` with an array or tensor would compare
    # elementwise (and raise an unrelated error) instead of refusing it.
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


class _Elementwise:
    """A stand-in for a numpy array or a tensor: ``x == "a"`` is not a bool, and asking whether it
    is true raises (as numpy's "truth value of an array is ambiguous"), so ``x in choices``
    raises an error that names no parameter unless the validator refuses a non-str first."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> _Elementwise:  # type: ignore[override]
        return self

    def __ne__(self, other: object) -> _Elementwise:  # type: ignore[override]
        return self

    def __bool__(self) -> bool:
        raise ValueError("the truth value of an elementwise comparison is ambiguous")

    def __repr__(self) -> str:
        return "<array-like>"


#: Values :func:`check_choice` refuses whatever the choices are (none is a str of a name
#: this library uses), with the exception it raises.
BAD_CHOICE = (
    ("nope", ValueError), ("", ValueError), ("Gaussian ", ValueError), (None, ValueError), (3, ValueError),
    (b"auto", ValueError), (["a"], ValueError), (("auto",), ValueError), (_Elementwise(), ValueError),
)


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


def _bad_dense_input() -> tuple:
    import warnings

    import torch  # local: this module is otherwise pure Python

    eye = torch.eye(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = eye.to_sparse_csr()
    return ((eye.to_sparse(), TypeError), (csr, TypeError), (torch.empty(2, 2, device="meta"), ValueError))


# Declared, not assigned: the first access goes to the module __getattr__ below, which builds the
# table and then stores it here.
BAD_DENSE_INPUT: tuple[tuple[object, type[Exception]], ...]
BAD_VALUES: dict[Callable[..., object], tuple[tuple[object, type[Exception]], ...]]


def __getattr__(name: str) -> object:
    """Build the tables that hold tensors on first access (PEP 562), then keep them."""
    table: object
    if name == "BAD_DENSE_INPUT":
        #: Tensors :func:`check_dense_input` refuses, with the exception it raises.
        table = _bad_dense_input()
    elif name == "BAD_VALUES":
        #: Each validator and its table of (bad value, exception) pairs.
        table = {
            check_epsilon: BAD_EPSILON,
            check_delta: BAD_DELTA,
            check_positive: BAD_POSITIVE,
            check_k: BAD_K,
            check_choice: BAD_CHOICE,
            check_dense_input: __getattr__("BAD_DENSE_INPUT"),
            check_int: BAD_INT,
            check_tolerance: BAD_TOLERANCE,
        }
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = table
    return table
