"""Linear algebra kernels: top-k eigenpairs of symmetric / Hermitian matrices.

See :func:`topk_eigh` (dense or randomized block Lanczos) and :class:`EighResult`, and
:func:`realify` (real rank-k output from complex Hermitian eigenpairs).

Layout (each module imports only those above it in this list):

* ``_result``: the value object :class:`EighResult`.
* ``_checks``: argument validation, dtype helpers, tolerance resolution.
* ``_pairs``: products with A, residual norms, the eigenvectors' phase convention.
* ``_basis``: projection, CholeskyQR2, Householder QR, extension of an orthonormal basis.
* ``_dense``: the dense solver (guarded :func:`torch.linalg.eigh`).
* ``_lanczos``: the block Lanczos state object and its driver, with the stopping rule.
* ``_warm_start``: the half-precision warm start and the device rule that enables it.
* ``topk``: :func:`topk_eigh`, choosing a solver; the noise-aware stopping rule.
* ``_realify``: :func:`realify`.
"""

from __future__ import annotations

from ._realify import realify
from .topk import NOISE_ATOL_FRACTION, SOLVERS, EighResult, topk_eigh, topk_eigh_operator

__all__ = ["NOISE_ATOL_FRACTION", "SOLVERS", "EighResult", "realify", "topk_eigh", "topk_eigh_operator"]
