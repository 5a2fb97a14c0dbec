"""Real output from complex Hermitian eigenpairs: :func:`realify`.

The complex Gaussian mechanism releases the top eigenpairs of a Hermitian matrix; the real
rank-k approximation the caller wants is post-processing of them (no privacy cost).
"""

from __future__ import annotations

import torch

__all__ = ["realify"]


def realify(h_vals: torch.Tensor, h_vecs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best real rank-k approximation of Re(V diag(λ) Vᴴ), as eigenpairs.

    Re(V Λ Vᴴ) = B diag(λ, λ) Bᵀ with B = [Re V, Im V] (shape (d, 2k)). With B = QR, its
    eigenpairs come from the small matrix R diag(λ, λ) Rᵀ. Keeping the k eigenvalues of
    largest magnitude gives the Eckart–Young optimum, so by the triangle inequality the
    real output is within 2× the complex output's Frobenius error to any real rank-k
    target (Mangoubi & Vishnoi, arXiv:2306.16648, post-processing of the complex output).

    Parameters
    ----------
    h_vals : Tensor of shape (k,)
        Real eigenvalues of the Hermitian matrix (float32 or float64).
    h_vecs : Tensor of shape (d, k)
        Their orthonormal complex eigenvectors (complex64 or complex128).
    k : int
        Rank of the real output.

    Returns
    -------
    eigenvalues : Tensor of shape (k,)
        The k eigenvalues of Re(V diag(λ) Vᴴ) of largest magnitude, in descending order;
        ``h_vals``' dtype.
    eigenvectors : Tensor of shape (d, k)
        Their orthonormal real eigenvectors, in the real dtype of ``h_vecs``. Computed in
        float64 on ``h_vecs``' device.
    """
    b = torch.cat([h_vecs.real, h_vecs.imag], dim=1)  # shape: (d, 2k)
    lam2 = torch.cat([h_vals, h_vals]).to(torch.float64)  # shape: (2k,)
    q, r = torch.linalg.qr(b.to(torch.float64))  # q: (d, m), r: (m, 2k), m = min(d, 2k)
    small = (r * lam2) @ r.T  # shape: (m, m)
    small = 0.5 * (small + small.T)
    theta, w = torch.linalg.eigh(small)
    idx = torch.argsort(theta.abs(), descending=True)[:k]
    idx = idx[torch.argsort(theta[idx], descending=True)]
    vecs = q @ w[:, idx]
    return theta[idx].to(h_vals.dtype), vecs.to(b.dtype)
