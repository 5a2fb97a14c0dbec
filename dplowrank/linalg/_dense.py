"""The dense solver: :func:`torch.linalg.eigh` of the whole matrix, guarded.

Exact to working precision; O(d³) time and a few d×d temporaries. cuSOLVER (and, rarely,
LAPACK) can fail on ill-conditioned single-precision input, so a failed or inaccurate
single-precision solve is retried in double precision (:func:`_eigh_guarded`). On the CPU
the solve runs on one thread: a threaded LAPACK ``syevd`` returns different rounding for
different thread counts, and a seeded release must give the same bytes on any machine.
"""

from __future__ import annotations

import math

import torch

from .._threads import single_threaded
from ._checks import _all_finite, _real_dtype, _resolve_tol, _rr_dtype
from ._pairs import _fix_phases, _residuals
from ._result import EighResult


def _eigh_guarded(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`torch.linalg.eigh` of ``A`` (shape (d, d)), retried in double precision.

    cuSOLVER's ``syevd`` (and, rarely, LAPACK's) can fail on ill-conditioned or highly
    degenerate single-precision input: it raises ``torch.linalg.LinAlgError``, or returns
    non-finite values, or top eigenvectors that are not orthonormal to single precision
    (seen on an H100: 2e-4 for a float32 matrix with condition 1e30 and a 73-fold
    eigenvalue). Single-precision input whose top-k eigenvectors fail
    ``max |VₖᴴVₖ − I| <= 50·eps·√d`` (or that raised) is solved again in float64 /
    complex128 and the result cast back. Double-precision input that raises or returns
    non-finite values, or a second failure, raises ``torch.linalg.LinAlgError`` naming the
    matrix's shape, dtype and device. Returns eigenvalues of shape (d,) (ascending, real)
    and eigenvectors of shape (d, d), in A's precision. On the CPU it runs on one thread
    (the same bytes whatever torch's thread count).
    """
    if A.device.type == "cpu":
        with single_threaded():
            return _eigh_retried(A, k)
    return _eigh_retried(A, k)


def _eigh_retried(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of :func:`_eigh_guarded`: solve, check, retry in double precision."""
    wide = _rr_dtype(A.dtype)
    d = A.shape[0]

    def usable(w: torch.Tensor, V: torch.Tensor, single: bool) -> bool:
        if not (_all_finite(w) and _all_finite(V)):
            return False
        if not single:
            return True
        Vk = V[:, -k:].to(wide)  # shape: (d, k)
        err = float((Vk.mH @ Vk - torch.eye(k, dtype=wide, device=V.device)).abs().max())
        return err <= 50.0 * torch.finfo(_real_dtype(A.dtype)).eps * math.sqrt(d)

    single = A.dtype != wide
    why = ""
    try:
        w, V = torch.linalg.eigh(A)
        if usable(w, V, single):
            return w, V
        why = " (non-finite or non-orthonormal output)"
    except RuntimeError as exc:  # LinAlgError and cuSOLVER's own errors are RuntimeErrors
        why = f" ({exc})"
    if single:
        try:
            w, V = torch.linalg.eigh(A.to(wide))
            if usable(w, V, False):
                return w.to(_real_dtype(A.dtype)), V.to(A.dtype)
            why += f"; in {wide}: non-finite output"
        except RuntimeError as exc:
            why += f"; in {wide}: {exc}"
    raise torch.linalg.LinAlgError(
        f"dense eigh failed for a matrix of shape {tuple(A.shape)}, dtype {A.dtype} on "
        f"{A.device}{why}; check that A is finite and Hermitian, or use solver='lanczos'"
    )


def _dense(
    A: torch.Tensor, k: int, tol: float | None, atol: float | None = None
) -> EighResult:
    """Top-k pairs of ``A`` (shape (d, d)) from :func:`_eigh_guarded`.

    ``tol`` / ``atol`` are only resolved and reported (see :class:`EighResult`); the
    residual is measured with one fresh product of A and the k returned vectors.
    """
    w, V = _eigh_guarded(A, k)  # ascending order, reversed here
    lam = w[-k:].flip(0)
    vecs = _fix_phases(V[:, -k:].flip(1))
    scale = float(max(abs(float(w[0])), abs(float(w[-1]))))
    res = _residuals(A, vecs, lam)
    residual = float(res.max()) / scale if scale > 0 else 0.0
    fro = float(torch.linalg.vector_norm(w.double()))
    tol = _resolve_tol(w.dtype, fro / scale if scale > 0 else 1.0, scale, tol, atol)
    d = A.shape[0]
    return EighResult(
        eigenvalues=lam,
        eigenvectors=vecs,
        solver="dense",
        iterations=0,
        matvecs=k,
        converged=True,
        residual=residual,
        tol=tol,
        scale=scale,
        next_eigenvalue=float(w[-k - 1]) if k < d else None,
        next_residual=0.0 if k < d else None,
        atol=atol,
    )
