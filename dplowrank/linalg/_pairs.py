"""Products with A and what both solvers do with finished eigenpairs.

:func:`_product` forms ``A @ X`` in the shape the device runs fastest, :func:`_residuals`
measures ``‖A v − λ v‖`` with a fresh product, and :func:`_fix_phases` applies the phase
convention of the returned eigenvectors.
"""

from __future__ import annotations

import torch

from ._capability import transposed_product


def _product(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``A @ X`` for symmetric / Hermitian A (shape (d, d)) and X of shape (d, w).

    On the CPUs where :func:`._capability.transposed_product` says the BLAS runs it
    faster, it is formed as (Xᵀ A)ᵀ (a transposed view); elsewhere plainly. A is
    symmetric, so both are ``A @ X``.
    """
    if not isinstance(A, torch.Tensor):  # an operator (topk_eigh_operator): its own product
        return A @ X
    if transposed_product(A.device, A.dtype, X.shape[1]):
        # Made row-major again: MKL rounds later products with a column-major operand
        # differently on 1 and 2 threads, and a seeded release must not depend on that.
        return (X.mT @ A).mT.contiguous()
    return A @ X


def _residuals(A: torch.Tensor, V: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Column norms ‖A v_j − λ_j v_j‖, as float64 on the CPU. Shapes (d, d), (d, k), (k,)."""
    R = _product(A, V).contiguous()  # shape: (d, k)
    R -= V * lam.to(V.dtype)
    return torch.linalg.vector_norm(R, dim=0).to("cpu", torch.float64)


def _fix_phases(V: torch.Tensor) -> torch.Tensor:
    """Rotate each column so that its entry of largest magnitude is real and positive.

    ``V``: Tensor of shape (d, k). Returns a new tensor of the same shape.
    """
    if V.shape[1] == 0:
        return V
    idx = V.abs().argmax(dim=0)  # first maximal index on ties
    piv = V.gather(0, idx.unsqueeze(0)).squeeze(0)  # shape: (k,)
    mag = piv.abs()
    ok = mag > 0
    if V.is_complex():
        safe = torch.where(ok, mag, torch.ones_like(mag))
        phase = torch.where(ok, piv / safe, torch.ones_like(piv))
        return V * phase.conj()
    sign = torch.where(piv < 0, -torch.ones_like(piv), torch.ones_like(piv))
    return V * sign
