"""Validation of :func:`~dplowrank.linalg.topk_eigh`'s arguments, dtype helpers and tolerances.

Everything here is cheap and runs before any solver: argument checks that raise
``TypeError`` / ``ValueError`` naming the offending value, the real and the wide
(Rayleigh–Ritz) dtype of a working dtype, and the resolution of ``tol`` / ``atol`` into the
relative tolerance the solvers compare residuals with.
"""

from __future__ import annotations

import math

import torch

from .._tensor import check_dense
from .._validation import check_int, check_tolerance

__all__ = ["SOLVERS", "DEFAULT_TOL"]

#: Names accepted by ``solver``.
SOLVERS = ("auto", "dense", "lanczos")

#: Default tolerances on ‖A v − λ v‖ / ‖A‖₂ by real dtype: the floor of
#: :func:`_default_tol`, which raises them for flat spectra so that they stay reachable.
DEFAULT_TOL = {torch.float32: 2e-6, torch.float64: 1e-10}

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


# ----------------------------------------------------------------------------- arguments


def _validate(
    A: object,
    k: object,
    solver: object,
    tol: object,
    atol: object,
    max_iters: object,
    oversample: object,
    check: bool,
) -> tuple[torch.Tensor, int, str, float | None, float | None, int | None, int | None]:
    """Check :func:`~dplowrank.linalg.topk_eigh`'s arguments; return them normalised.

    Returns ``(A, k, solver, tol, atol, max_iters, oversample)`` with the numbers as
    Python ints / floats (``None`` kept). ``check``: also check that A is finite.
    """
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"A must be a torch.Tensor, got {type(A).__name__}")
    check_dense(A, "A")
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix of shape (d, d), got shape {tuple(A.shape)}")
    if A.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"A must have dtype float32, float64, complex64 or complex128, got {A.dtype}"
        )
    d = A.shape[0]
    if d == 0:
        raise ValueError("A must not be empty, got shape (0, 0)")
    k_int = check_int(k, "k", low=1, high=d)
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    tol_f = check_tolerance(tol, "tol")
    atol_f = check_tolerance(atol, "atol")
    iters = None if max_iters is None else check_int(max_iters, "max_iters", low=1)
    over = None if oversample is None else check_int(oversample, "oversample", low=0)
    if check and not _all_finite(A):
        bad = (~torch.isfinite(A)).nonzero()
        i, j = (int(x) for x in bad[0])
        raise ValueError(
            f"A contains non-finite values ({bad.shape[0]} entries), "
            f"e.g. A[{i}, {j}] = {A[i, j].item()}"
        )
    return A, k_int, solver, tol_f, atol_f, iters, over


def _all_finite(A: torch.Tensor) -> bool:
    """Whether every entry of ``A`` (any shape) is finite.

    A sum is a fast screen (a nan or inf entry makes it non-finite; the converse can fail
    only through overflow of huge finite entries), confirmed entrywise when it fails.
    """
    if bool(torch.isfinite(A.sum())):
        return True
    return bool(torch.isfinite(A).all())


# ----------------------------------------------------------------------------- dtypes


def _largest_entry(A: torch.Tensor) -> float:
    """An estimate of max |A_ij| (A real, shape (d, d)) from the diagonal and every 64th row:
    one read of d + d²/64 entries, no temporary of that size (NaN/inf when those hold one)."""
    lo, hi = torch.aminmax(A.diagonal())
    lo2, hi2 = torch.aminmax(A[::64])
    ends = (-float(lo), float(hi), -float(lo2), float(hi2))
    return math.nan if any(math.isnan(x) for x in ends) else max(ends)


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of ``dtype``: float32 for complex64, float64 for complex128."""
    return dtype.to_real()


def _rr_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the projected (Rayleigh–Ritz) problem: float64 or complex128."""
    return torch.complex128 if dtype.is_complex else torch.float64


# ----------------------------------------------------------------------------- tolerances


def _default_tol(real: torch.dtype, fro_ratio: float) -> float:
    """The default relative tolerance for real dtype ``real``, given ``‖A‖_F / ‖A‖₂``.

    Rounding in the products ``A @ v`` (and in ``Qᴴ A Q``) scales with ‖A‖_F rather than
    ‖A‖₂, and Ritz pairs stagnate at a relative residual of about 0.25-0.5 ·
    eps · ‖A‖_F / ‖A‖₂ (measured in float32, d ≤ 4096: 2e-7 for a spiked matrix with
    ‖A‖_F/‖A‖₂ ≈ 5, 8e-7 for pure noise (≈ 23-32), 1.5e-6 for a flat ±1 spectrum (≈ 43)).
    A fresh residual in A's dtype is itself uncertain by about that much, so the solver
    claims convergence only when ``residual + eps · fro_ratio <= tol``. The default
    ``max(DEFAULT_TOL[real], 2 · eps · fro_ratio)`` is therefore 2e-6 (float32) or 1e-10
    (float64) for spiked spectra, and grows towards 2·eps·√d for flat ones so that it
    stays reachable. ``fro_ratio`` comes from the first random block
    (E‖A Q₀‖_F² = (b/d)·‖A‖_F²) or, for the dense solver, from all eigenvalues.
    """
    eps = torch.finfo(real).eps
    return max(DEFAULT_TOL[real], 2.0 * eps * fro_ratio)


def _resolve_tol(
    real: torch.dtype, fro_ratio: float, scale: float, tol: float | None, atol: float | None
) -> float:
    """The relative tolerance in force: residuals are compared with ``tol_now · scale``.

    Without ``atol``: ``tol``, or the default of :func:`_default_tol`. With ``atol``: the
    looser of ``atol / scale`` and ``tol``, where ``tol`` defaults to the rounding floor
    ``2 · eps · ‖A‖_F / ‖A‖₂`` (not to ``DEFAULT_TOL``: an absolute target below the
    default is honoured down to what the dtype can reach).
    """
    if atol is None:
        return tol if tol is not None else _default_tol(real, fro_ratio)
    floor = tol if tol is not None else 2.0 * torch.finfo(real).eps * fro_ratio
    return max(floor, atol / scale) if scale > 0 else floor
