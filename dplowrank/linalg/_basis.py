"""Orthonormal bases: projection, CholeskyQR2, Householder QR and extension of a basis.

The Krylov solver (:mod:`._lanczos`) and the warm start (:mod:`._warm_start`) keep their
blocks orthonormal with these kernels. Gram matrices and triangular factors are formed in
float64 / complex128 on the CPU, so that a float32 basis stays orthonormal to float32's
working precision.
"""

from __future__ import annotations

import torch

from ._checks import _rr_dtype


def _project_out(W: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """W − Q Qᴴ W, one classical Gram–Schmidt pass. Shapes (d, w), (d, m)."""
    if Q.shape[1] == 0:
        return W
    return W - Q @ (Q.mH @ W)


def _cholqr(W: torch.Tensor, passes: int = 2) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Cholesky QR, with the Gram matrices formed in float64 / complex128.

    ``W``: Tensor of shape (d, w). Returns ``(Q, R)`` with ``Q`` of shape (d, w)
    orthonormal and ``R`` of shape (w, w) upper triangular (float64 or complex128, on the
    CPU) such that ``W = Q R``; or ``None`` when ``W`` is (nearly) rank-deficient, with
    cond(W) beyond ~1e6, and the caller should use Householder QR. Two passes
    (CholeskyQR2; Fukaya, Nakatsukasa, Yanagisawa & Yamamoto 2014) orthonormalise to
    working precision when cond(W) is below ~1/√eps of the Gram's dtype (Yamazaki, Tomov
    & Dongarra 2015). ``passes=1`` leaves ``QᴴQ − I`` at about eps(W)·cond(W): enough
    where orthogonality only has to be rough (the warm start's blocks).
    """
    rr = _rr_dtype(W.dtype)
    R: torch.Tensor | None = None
    Q = W
    for p in range(passes):
        Q64 = Q.to(rr)
        G = (Q64.mH @ Q64).cpu()  # shape: (w, w)
        L, info = torch.linalg.cholesky_ex(G)
        if int(info) != 0 or not bool(torch.isfinite(L).all()):
            return None
        diag = L.diagonal().real
        # cond(W) ≈ max/min of diag(L) for the first pass; the second pass sees a nearly
        # orthonormal Q (diag ≈ 1) unless the first was already inaccurate.
        if p == 0 and not bool(diag.min() > 1e-6 * diag.max()):
            return None
        if p == 1 and not bool(((diag > 0.5) & (diag < 2.0)).all()):
            return None
        Rp = L.mH
        R = Rp if R is None else Rp @ R
        # Q <- Q Rp⁻¹, as a product with the inverse formed in float64 on the CPU: a
        # right-sided triangular solve with a tall Q runs column by column (far slower than
        # the product, see docs/eigensolver.md), and the inverse of a w×w triangle with
        # cond ≤ 1e6 (checked above) is accurate to far below W's eps.
        eye = torch.eye(Rp.shape[0], dtype=Rp.dtype)
        Rinv = torch.linalg.solve_triangular(Rp, eye, upper=True)
        Q = Q @ Rinv.to(device=W.device, dtype=W.dtype)
    assert R is not None  # passes >= 1
    return Q, R


def _householder(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Householder QR: ``(Q, |diag R|)``, the latter float64 on the CPU. Shape (d, w) in."""
    Q, R = torch.linalg.qr(W)
    return Q, R.diagonal().abs().to("cpu", torch.float64)


def _extend_basis(
    W: torch.Tensor,
    Q: torch.Tensor,
    gen: torch.Generator,
    ref: float,
) -> torch.Tensor:
    """Orthonormal columns spanning (most of) ``W`` and orthogonal to ``Q``.

    Parameters
    ----------
    W : Tensor of shape (d, w)
        Candidates, already projected twice against ``Q``.
    Q : Tensor of shape (d, m)
        Orthonormal basis.
    gen : torch.Generator
        Draws the random replacements for numerically dependent candidates.
    ref : float
        A candidate whose new content is below ``eps · ref`` is rounding noise and is
        replaced by a random vector (``ref`` ≈ ‖A‖₂ for Krylov candidates). Content just
        above it is kept: near convergence the Krylov directions that still matter are only
        ~tol·‖A‖ long.

    Returns
    -------
    Tensor of shape (d, w') with w' = min(w, d − m) unless the space is exhausted (then
    fewer); its columns are orthonormal and orthogonal to ``Q`` to working precision.
    """
    d, m = Q.shape
    room = d - m
    w = min(W.shape[1], room)
    if w <= 0:
        return W[:, :0]
    W = W[:, :w]
    eps = torch.finfo(W.dtype).eps
    out = _cholqr(W)
    if out is not None:
        Qn, diag = out[0], out[1].diagonal().abs().to(torch.float64)
    else:
        Qn, diag = _householder(W)
    bad = diag <= eps * ref
    # CGS2 leaves each candidate orthogonal to Q up to ~eps·‖w_j‖; the QR divides column j
    # by its content beyond the earlier columns, diag_j, amplifying that by ‖w_j‖/diag_j.
    # Past a factor 8 (or when a column was replaced) another round restores orthogonality.
    norms = torch.linalg.vector_norm(W, dim=0).to("cpu", torch.float64)
    need_clean = bool(bad.any()) or bool((diag * 8.0 < norms).any())
    if not need_clean:
        return Qn
    if bool(bad.any()):
        bad_dev = bad.to(W.device)
        nb = int(bad.sum())
        fresh = torch.randn((d, nb), generator=gen, dtype=W.dtype, device=W.device)
        Qn = Qn.clone()
        Qn[:, bad_dev] = fresh / torch.linalg.vector_norm(fresh, dim=0)
    for _ in range(4):
        Qn = _project_out(_project_out(Qn, Q), Q)
        Qn, diag = _householder(Qn)
        if bool((diag > 0.5).all()):
            return Qn
        # Columns that lost (almost) everything lie in span(Q, earlier columns): drop them;
        # the rest get another round to restore orthogonality.
        keep = (diag > 1e3 * eps).to(W.device)
        Qn = Qn[:, keep]
        if Qn.shape[1] == 0:
            return Qn
    return Qn
