"""The value object :class:`EighResult`: top-k eigenpairs and how they were obtained.

It sits below the solvers (:mod:`._dense`, :mod:`._lanczos`), which build it, and is
re-exported by :mod:`.topk` and :mod:`dplowrank.linalg`; it imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EighResult"]


@dataclass(frozen=True)
class EighResult:
    """Top-k eigenpairs and how they were obtained.

    Attributes
    ----------
    eigenvalues : Tensor of shape (k,)
        The k algebraically largest eigenvalues, in descending order; real dtype
        (float32 for float32/complex64 input, float64 otherwise), on A's device.
    eigenvectors : Tensor of shape (d, k)
        Orthonormal eigenvectors, column ``j`` for ``eigenvalues[j]``; A's dtype and
        device. Each column's entry of largest magnitude (first one on ties) is real and
        positive.
    solver : str
        ``"dense"`` or ``"lanczos"``: the solver that produced the result.
    iterations : int
        Block Lanczos steps taken, each one product with a (d, ≤ b) block (0 for the dense
        solver; after a fallback from ``"auto"``, the Lanczos steps spent first).
    matvecs : int
        Columns multiplied by A in total: a product ``A @ X`` with X of shape (d, c)
        counts c. Includes the residual checks (k columns each; the only product of the
        dense solver) and the half-precision products of a warm start.
    converged : bool
        Iterative solver: whether ``residual + eps·‖A‖_F/scale <= tol`` (the second term,
        estimated, covers the rounding of the residual's own computation, so that the
        exact residual is within ``tol`` too). Dense solver (direct, backward stable):
        always true.
    residual : float
        ``max_j ‖A v_j − λ_j v_j‖₂ / scale`` over the k returned pairs, computed in A's
        dtype with a fresh product of A and the returned eigenvectors.
    tol : float
        The relative tolerance in force (the default resolved for this matrix when none
        was given; with ``atol``, ``max(atol / scale, tol)``, see
        :func:`~dplowrank.linalg.topk_eigh`; the dense solver reports it without using it).
        Whatever the options, a converged result satisfies ``residual <= tol``.
    scale : float
        What the residual is divided by: the largest |Ritz value| seen (a lower bound on
        ‖A‖₂) for the iterative solver, max |eigenvalue| = ‖A‖₂ for the dense one.
    next_eigenvalue : float or None
        The (k+1)-th eigenvalue, for gap diagnostics (``None`` when k = d). Iterative
        solver: the (k+1)-th Ritz value θ of the final Rayleigh–Ritz, not held to ``tol``.
        By Cauchy interlacing θ ≤ λ_{k+1}, and [θ − r, θ + r] holds an eigenvalue, so
        λ_{k+1} ∈ [θ, θ + r] unless the Krylov space missed an eigenvalue above θ (an
        event of probability zero for a Gaussian start in exact arithmetic).
    next_residual : float or None
        r = ‖A u − θ u‖₂ of that Ritz pair (absolute; 0.0 for the dense solver).
    atol : float or None
        The absolute residual target that was asked for (``None``: none).
    warm_start : str or None
        ``"float16"`` or ``"bfloat16"``: the half-precision type of the warm start whose
        block started the Krylov solve (also kept after a fallback to dense, whose
        ``matvecs`` count its products). ``None``: no warm start ran (dense solver, complex
        A, warm start off or not chosen for this device, or it fell back to a random block
        because the copy did not fit in memory or was not finite).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    solver: str
    iterations: int
    matvecs: int
    converged: bool
    residual: float
    tol: float = float("nan")
    scale: float = float("nan")
    next_eigenvalue: float | None = None
    next_residual: float | None = None
    atol: float | None = None
    warm_start: str | None = None
